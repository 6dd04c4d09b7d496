"""The S3T deletion ledger: an SQLite database in the run directory that is the source of truth
for what every adapter checkpoint saw and what is being served.

Tables: ``samples`` (id, content hash, hashes of the normalised question and answer, shard, slice,
text, which deletion removed it),
``stages`` (one row per trained checkpoint: shard, sequence, stage, generation, slices, path,
sha256) with ``stage_samples`` (exactly which samples a stage was trained on, cumulative over
π₁…π_i), ``sequences`` (slice order and valid prefix), ``serving`` (per shard: the sequence and
prefix served, or ``needs_retrain``) and ``deletions`` (request id, sample ids, time, status).

Every change, the creation of the schema included, runs in one ``BEGIN IMMEDIATE`` transaction in
WAL mode, so concurrent deletions from several processes are serialised and a process killed
mid-deletion leaves the old state.

Deleted text does not stay: `DeletionLedger.purge` (run by ``s3t purge`` and at the end of
``s3t retrain``) drops the stages that saw a deleted sample, blanks the deleted samples' question
and answer and the text of ``--match`` queries, then rewrites the database with ``secure_delete``,
``VACUUM`` and a truncating WAL checkpoint so no page of the file still holds the text. What is
kept are sha256 hashes of the *normalised* text (lower case, whitespace collapsed): enough for a
repeated ``--match`` to be recognised as already deleted, not enough to read the data back.
Validity is computed from ``stage_samples``: stage k of a sequence is exact iff none of the
samples it was trained on is deleted; a sequence's valid prefix is its longest run of exact stages
(stages are cumulative, so a deleted sample in slice π_j invalidates stages j…L).
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from llm_unlearn.data.source import close_phrases
from llm_unlearn.errors import UnlearnError

LEDGER_FILE = "ledger.sqlite"
SCHEMA_VERSION = 2  # 2: text hashes, nullable text (purge), excluded samples
LEDGER_FORMAT = "llm-unlearn-s3t-ledger"

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE samples (
    sample_id TEXT PRIMARY KEY, content_hash TEXT NOT NULL, question_hash TEXT NOT NULL, answer_hash TEXT NOT NULL,
    shard INTEGER NOT NULL, slice INTEGER NOT NULL, question TEXT, answer TEXT,
    deleted_by INTEGER REFERENCES deletions(request_id));
CREATE INDEX samples_shard_slice ON samples(shard, slice);
CREATE TABLE sequences (
    shard INTEGER NOT NULL, sequence INTEGER NOT NULL, slice_order TEXT NOT NULL,
    generation INTEGER NOT NULL DEFAULT 0, valid_prefix INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (shard, sequence));
CREATE TABLE stages (
    stage_id INTEGER PRIMARY KEY AUTOINCREMENT, shard INTEGER NOT NULL, sequence INTEGER NOT NULL,
    stage INTEGER NOT NULL, generation INTEGER NOT NULL, slices TEXT NOT NULL, checkpoint TEXT NOT NULL,
    sha256 TEXT NOT NULL, weights_sha256 TEXT NOT NULL, num_samples INTEGER NOT NULL, seed INTEGER NOT NULL,
    created_at TEXT NOT NULL, UNIQUE (shard, sequence, stage, generation));
CREATE TABLE stage_samples (
    stage_id INTEGER NOT NULL REFERENCES stages(stage_id), sample_id TEXT NOT NULL REFERENCES samples(sample_id),
    PRIMARY KEY (stage_id, sample_id));
CREATE INDEX stage_samples_sample ON stage_samples(sample_id);
CREATE TABLE serving (
    shard INTEGER PRIMARY KEY, sequence INTEGER, prefix INTEGER NOT NULL, generation INTEGER NOT NULL,
    stage_id INTEGER REFERENCES stages(stage_id), status TEXT NOT NULL, updated_by INTEGER, updated_at TEXT NOT NULL);
CREATE TABLE deletions (
    request_id INTEGER PRIMARY KEY AUTOINCREMENT, requested_at TEXT NOT NULL, sample_ids TEXT NOT NULL,
    query TEXT, query_hash TEXT, status TEXT NOT NULL, affected_shards TEXT NOT NULL DEFAULT '[]',
    retrain_shards TEXT NOT NULL DEFAULT '[]', pid INTEGER);
"""

DeletionHook = Callable[[str], None]
DELETION_STEPS = ("marked", "truncated", "served")


def content_hash(question: str, answer: str) -> str:
    return hashlib.sha256(json.dumps([question, answer], ensure_ascii=False).encode()).hexdigest()


def normalise_text(text: str) -> str:
    """Lower case, whitespace runs collapsed to one space, ends stripped (what ``--match`` compares)."""
    return " ".join(text.lower().split())


def text_hash(text: str) -> str:
    """sha256 of the normalised text: what the ledger keeps of a deleted question, answer or query."""
    return hashlib.sha256(normalise_text(text).encode()).hexdigest()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


@dataclass
class DeletionResult:
    """Outcome of one deletion request. `status`: ``applied`` or ``already_deleted`` (nothing changed)."""

    request_id: int | None
    status: str
    sample_ids: list[str]
    already_deleted: list[str]
    affected_shards: list[int]
    retrain_shards: list[int]
    serving: dict[int, tuple[int | None, int]]  # shard -> (sequence, prefix) after the request


@dataclass
class ShardStatus:
    shard: int
    status: str  # serving | needs_retrain | training
    sequence: int | None
    prefix: int
    num_slices: int
    generation: int
    samples: int
    deleted: int
    live_sequences: int
    capacity: int  # fewest further deletions that can force this shard to retrain (worst case)
    checkpoint: str | None


@dataclass
class StageRecord:
    stage_id: int
    shard: int
    sequence: int
    stage: int
    generation: int
    slices: list[int]
    checkpoint: str
    sha256: str
    weights_sha256: str
    seed: int
    num_samples: int


class DeletionLedger:
    """SQLite ledger of one S3T run directory (see module docstring)."""

    def __init__(self, path: str | Path, busy_timeout_s: float = 120.0):
        self.path = Path(path)
        self.busy_timeout_s = busy_timeout_s
        self._con: sqlite3.Connection | None = None
        self._pid: int | None = None

    # -- opening -----------------------------------------------------------------------------
    @classmethod
    def create(cls, run_dir: str | Path, samples: Iterable[dict], sequences: list[list[list[int]]],
               meta: dict[str, str], excluded: Iterable[str] | None = None) -> DeletionLedger:
        """New ledger: `samples` rows need sample_id, question, answer, shard, slice. `excluded` ids
        are deleted before any training (an exact-retrain reference, ``s3t train --exclude-ids``):
        their slot in the plan stays, their text is never stored."""
        path = Path(run_dir) / LEDGER_FILE
        if path.exists():
            raise UnlearnError(f"{path} already exists")
        ledger = cls(path)
        excluded = set(excluded or ())

        def write(con):
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    con.execute(statement)
            rows = {"format": LEDGER_FORMAT, "schema_version": str(SCHEMA_VERSION), "created_at": _now(), **meta}
            con.executemany("INSERT INTO meta VALUES (?, ?)", [(k, str(v)) for k, v in rows.items()])
            con.executemany(
                "INSERT INTO samples (sample_id, content_hash, question_hash, answer_hash, shard, slice, question, answer)"
                " VALUES (?,?,?,?,?,?,?,?)",
                [(r["sample_id"], content_hash(r["question"], r["answer"]), text_hash(r["question"]),
                  text_hash(r["answer"]), r["shard"], r["slice"],
                  None if r["sample_id"] in excluded else r["question"],
                  None if r["sample_id"] in excluded else r["answer"]) for r in samples],
            )
            con.executemany(
                "INSERT INTO sequences (shard, sequence, slice_order) VALUES (?,?,?)",
                [(s, b, json.dumps(order)) for s, seqs in enumerate(sequences) for b, order in enumerate(seqs)],
            )
            if excluded:
                cur = con.execute("INSERT INTO deletions (requested_at, sample_ids, query, status, pid) "
                                  "VALUES (?,?,?,?,?)", (_now(), json.dumps(sorted(excluded)), None, "excluded",
                                                         os.getpid()))
                con.executemany("UPDATE samples SET deleted_by = ? WHERE sample_id = ?",
                                [(cur.lastrowid, sid) for sid in sorted(excluded)])

        ledger._transaction(write)  # a crash leaves an empty file, which `open` refuses
        return ledger

    @classmethod
    def open(cls, run_dir: str | Path) -> DeletionLedger:
        """Open the ledger of an existing run; refuse one written by an incompatible version."""
        run_dir = Path(run_dir)
        path = run_dir / LEDGER_FILE
        if not run_dir.is_dir():
            raise UnlearnError(f"S3T run directory not found: {run_dir}")
        if not path.is_file():
            raise UnlearnError(f"{run_dir} is not an S3T run directory (no {LEDGER_FILE}); create one with llm-unlearn s3t train")
        ledger = cls(path)
        meta = ledger.meta()
        if meta.get("format") != LEDGER_FORMAT:
            raise UnlearnError(f"{path}: not an S3T ledger (format {meta.get('format')!r})")
        if meta.get("schema_version") != str(SCHEMA_VERSION):
            raise UnlearnError(
                f"{path}: ledger schema version {meta.get('schema_version')} written by llm-unlearn "
                f"{meta.get('package_version', '?')}; this llm-unlearn reads schema {SCHEMA_VERSION}: "
                "use the matching llm-unlearn version or retrain the run"
            )
        return ledger

    def _connect(self) -> sqlite3.Connection:
        """One connection per ledger object and process (closing the last connection checkpoints
        the WAL, which would cost every deletion a full database write)."""
        if self._con is not None and self._pid == os.getpid():
            return self._con
        con = sqlite3.connect(str(self.path), timeout=self.busy_timeout_s, isolation_level=None,
                              check_same_thread=False)
        con.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}")
        con.execute("PRAGMA journal_mode = WAL")
        con.execute("PRAGMA synchronous = FULL")
        con.execute("PRAGMA foreign_keys = ON")
        con.execute("PRAGMA secure_delete = ON")  # freed pages are zeroed: purged text leaves no trace
        self._con, self._pid = con, os.getpid()
        return con

    def close(self) -> None:
        if self._con is not None and self._pid == os.getpid():
            self._con.close()
        self._con = None

    def _transaction(self, fn, immediate: bool = True):
        con = self._connect()
        con.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
        try:
            out = fn(con)
        except BaseException:
            con.execute("ROLLBACK")
            raise
        con.execute("COMMIT")
        return out

    def _read(self, fn):
        return self._transaction(fn, immediate=False)

    # -- reading -----------------------------------------------------------------------------
    def meta(self) -> dict[str, str]:
        try:
            return dict(self._read(lambda con: con.execute("SELECT key, value FROM meta").fetchall()))
        except sqlite3.DatabaseError as exc:
            raise UnlearnError(f"{self.path}: cannot read the S3T ledger ({exc})") from None

    def sample_ids(self, shard: int | None = None, slices: Iterable[int] | None = None,
                   include_deleted: bool = False) -> list[str]:
        def q(con):
            sql, args = "SELECT sample_id, shard, slice FROM samples WHERE 1=1", []
            if not include_deleted:
                sql += " AND deleted_by IS NULL"
            if shard is not None:
                sql += " AND shard = ?"
                args.append(shard)
            rows = con.execute(sql + " ORDER BY rowid", args).fetchall()
            keep = None if slices is None else set(slices)
            return [r[0] for r in rows if keep is None or r[2] in keep]

        return self._read(q)

    def samples(self, ids: Iterable[str]) -> list[dict]:
        ids = list(ids)

        def q(con):
            out = []
            for sid in ids:
                row = con.execute("SELECT sample_id, question, answer, shard, slice, deleted_by FROM samples "
                                  "WHERE sample_id = ?", (sid,)).fetchone()
                if row is None:
                    raise UnlearnError(f"unknown sample id '{sid}'")
                out.append(dict(zip(("sample_id", "question", "answer", "shard", "slice", "deleted_by"), row)))
            return out

        return self._read(q)

    def deleted_ids(self) -> set[str]:
        return {r[0] for r in self._read(lambda con: con.execute(
            "SELECT sample_id FROM samples WHERE deleted_by IS NOT NULL").fetchall())}

    def sequence_orders(self, shard: int) -> dict[int, list[int]]:
        rows = self._read(lambda con: con.execute(
            "SELECT sequence, slice_order FROM sequences WHERE shard = ? ORDER BY sequence", (shard,)).fetchall())
        return {b: json.loads(o) for b, o in rows}

    def generation(self, shard: int) -> int:
        row = self._read(lambda con: con.execute(
            "SELECT MAX(generation) FROM sequences WHERE shard = ?", (shard,)).fetchone())
        return int(row[0] or 0)

    def num_shards(self) -> int:
        return int(self._read(lambda con: con.execute("SELECT COUNT(DISTINCT shard) FROM sequences").fetchone())[0])

    def stage(self, stage_id: int) -> StageRecord:
        row = self._read(lambda con: con.execute(_STAGE_SELECT + " WHERE stage_id = ?", (stage_id,)).fetchone())
        if row is None:
            raise UnlearnError(f"{self.path}: no stage {stage_id}")
        return _stage_record(row)

    def stages(self, shard: int | None = None) -> list[StageRecord]:
        sql, args = _STAGE_SELECT, ()
        if shard is not None:
            sql, args = sql + " WHERE shard = ?", (shard,)
        return [_stage_record(r) for r in self._read(lambda con: con.execute(
            sql + " ORDER BY stage_id", args).fetchall())]

    def stage_sample_ids(self, stage_id: int) -> list[str]:
        return [r[0] for r in self._read(lambda con: con.execute(
            "SELECT ss.sample_id FROM stage_samples ss JOIN samples s ON s.sample_id = ss.sample_id "
            "WHERE ss.stage_id = ? ORDER BY s.rowid", (stage_id,)).fetchall())]

    def serving(self) -> dict[int, dict]:
        """shard -> {sequence, prefix, generation, stage_id, status} (a consistent snapshot)."""
        rows = self._read(lambda con: con.execute(
            "SELECT shard, sequence, prefix, generation, stage_id, status FROM serving ORDER BY shard").fetchall())
        keys = ("sequence", "prefix", "generation", "stage_id", "status")
        return {r[0]: dict(zip(keys, r[1:])) for r in rows}

    def active_stages(self) -> list[StageRecord]:
        """The checkpoints served now (one per serving shard)."""
        return [self.stage(v["stage_id"]) for v in self.serving().values()
                if v["status"] == "serving" and v["stage_id"] is not None]

    def active_deleted_overlap(self) -> list[tuple[int, str]]:
        """(stage_id, sample_id) pairs where a served stage was trained on a deleted sample; empty if exact."""
        return self._read(lambda con: con.execute(
            "SELECT ss.stage_id, ss.sample_id FROM serving v JOIN stage_samples ss ON ss.stage_id = v.stage_id "
            "JOIN samples s ON s.sample_id = ss.sample_id WHERE v.status = 'serving' AND s.deleted_by IS NOT NULL"
        ).fetchall())

    def deletions(self) -> list[dict]:
        rows = self._read(lambda con: con.execute(
            "SELECT request_id, requested_at, sample_ids, query, status, affected_shards, retrain_shards "
            "FROM deletions ORDER BY request_id").fetchall())
        return [{"request_id": r[0], "requested_at": r[1], "sample_ids": json.loads(r[2]), "query": r[3],
                 "status": r[4], "affected_shards": json.loads(r[5]), "retrain_shards": json.loads(r[6])}
                for r in rows]

    def retrain_pending(self) -> list[int]:
        return [r[0] for r in self._read(lambda con: con.execute(
            "SELECT shard FROM serving WHERE status = 'needs_retrain' ORDER BY shard").fetchall())]

    def status(self) -> list[ShardStatus]:
        return self._read(self._status)

    def _status(self, con) -> list[ShardStatus]:
        out = []
        serving = {r[0]: r[1:] for r in con.execute(
            "SELECT shard, sequence, prefix, generation, stage_id, status FROM serving")}
        for (shard,) in con.execute("SELECT DISTINCT shard FROM sequences ORDER BY shard").fetchall():
            seqs = con.execute("SELECT slice_order, valid_prefix, generation FROM sequences WHERE shard = ?",
                               (shard,)).fetchall()
            n, deleted = con.execute(
                "SELECT COUNT(*), COUNT(deleted_by) FROM samples WHERE shard = ?", (shard,)).fetchone()
            live = [json.loads(o) for o, vp, _ in seqs if vp >= 1]
            sequence, prefix, gen, stage_id, status = serving.get(shard, (None, 0, seqs[0][2], None, "training"))
            ckpt = None
            if stage_id is not None and status == "serving":
                ckpt = con.execute("SELECT checkpoint FROM stages WHERE stage_id = ?", (stage_id,)).fetchone()[0]
            out.append(ShardStatus(
                shard=shard, status=status, sequence=sequence, prefix=prefix, num_slices=len(json.loads(seqs[0][0])),
                generation=gen, samples=n, deleted=deleted, live_sequences=len(live),
                capacity=len({order[0] for order in live}), checkpoint=ckpt,
            ))
        return out

    # -- writing: training -------------------------------------------------------------------
    def record_stage(self, shard: int, sequence: int, stage: int, generation: int, slices: list[int],
                     checkpoint: str, sha256: str, weights_sha256: str, sample_ids: list[str], seed: int) -> int:
        """Record one trained checkpoint and exactly which samples it saw; returns its stage_id."""

        def write(con):
            cur = con.execute(
                "INSERT INTO stages (shard, sequence, stage, generation, slices, checkpoint, sha256, weights_sha256, "
                "num_samples, seed, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (shard, sequence, stage, generation, json.dumps(slices), checkpoint, sha256, weights_sha256,
                 len(sample_ids), seed, _now()))
            stage_id = cur.lastrowid
            con.executemany("INSERT INTO stage_samples VALUES (?, ?)", [(stage_id, s) for s in sample_ids])
            _refresh_prefixes(con, shard)
            return stage_id

        return self._transaction(write)

    def start_generation(self, shard: int, generation: int) -> None:
        """A retrain of `shard` begins: its sequences restart at prefix 0 of the new generation."""
        self._transaction(lambda con: con.execute(
            "UPDATE sequences SET generation = ?, valid_prefix = 0 WHERE shard = ?", (generation, shard)))

    def publish(self, shard: int, request_id: int | None = None) -> tuple[int | None, int]:
        """Serve the best surviving sequence of `shard` (after training or retraining)."""

        def write(con):
            out = _choose_serving(con, shard, request_id)
            if request_id is None:
                _settle_deletions(con)
            return out

        return self._transaction(write)

    # -- purging -----------------------------------------------------------------------------
    def deleted_texts(self) -> list[str]:
        """Question, answer and ``--match`` text of deleted samples still held (empty after a purge)."""
        def q(con):
            rows = con.execute("SELECT question, answer FROM samples WHERE deleted_by IS NOT NULL "
                               "AND (question IS NOT NULL OR answer IS NOT NULL)").fetchall()
            rows += con.execute("SELECT query, NULL FROM deletions WHERE query IS NOT NULL").fetchall()
            return [t for row in rows for t in row if t]

        return self._read(q)

    def deleted_content_hashes(self) -> list[tuple[str, str]]:
        """(sample id, content hash) of every deleted sample: what the ledger keeps of them."""
        return self._read(lambda con: con.execute(
            "SELECT sample_id, content_hash FROM samples WHERE deleted_by IS NOT NULL ORDER BY rowid").fetchall())

    def dirty_stages(self) -> list[tuple[StageRecord, str]]:
        """Stages still recorded that were trained on a deleted sample: (stage, one such sample id)."""
        rows = self._read(lambda con: con.execute(
            "SELECT ss.stage_id, MIN(ss.sample_id) FROM stage_samples ss JOIN samples s ON s.sample_id = ss.sample_id "
            "WHERE s.deleted_by IS NOT NULL GROUP BY ss.stage_id ORDER BY ss.stage_id").fetchall())
        return [(self.stage(stage_id), sid) for stage_id, sid in rows]

    def purge_records(self) -> list[StageRecord]:
        """One transaction: forget every stage that saw a deleted sample and every stage of a
        superseded generation (never served again), blank the deleted text and query text (their
        hashes stay). Returns the stages dropped; their checkpoint directories are the caller's to
        remove. Follow with `wipe` so no free page keeps the text."""

        def write(con):
            rows = con.execute(
                _STAGE_SELECT + " st WHERE st.stage_id NOT IN (SELECT stage_id FROM serving WHERE stage_id IS NOT NULL) "
                "AND (EXISTS (SELECT 1 FROM stage_samples ss JOIN samples s ON s.sample_id = ss.sample_id "
                "             WHERE ss.stage_id = st.stage_id AND s.deleted_by IS NOT NULL) "
                "     OR st.generation < (SELECT q.generation FROM sequences q WHERE q.shard = st.shard "
                "                         AND q.sequence = st.sequence)) ORDER BY st.stage_id").fetchall()
            dropped = [_stage_record(r) for r in rows]
            ids = [(r.stage_id,) for r in dropped]
            con.executemany("DELETE FROM stage_samples WHERE stage_id = ?", ids)
            con.executemany("DELETE FROM stages WHERE stage_id = ?", ids)
            con.execute("UPDATE samples SET question = NULL, answer = NULL WHERE deleted_by IS NOT NULL "
                        "AND (question IS NOT NULL OR answer IS NOT NULL)")
            con.execute("UPDATE deletions SET query = NULL WHERE query IS NOT NULL")
            return dropped

        return self._transaction(write)

    def wipe(self) -> None:
        """Rewrite the database file (``VACUUM``) and empty the WAL, so no page of either still holds
        text a purge removed (``secure_delete`` zeroes freed pages too)."""
        con = self._connect()
        con.execute("VACUUM")
        busy, _, _ = con.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        if busy:
            raise UnlearnError(f"{self.path}: another process holds the ledger open; the WAL could not be emptied "
                               "(run the purge again when it is idle)")

    # -- writing: deletion -------------------------------------------------------------------
    def delete(self, ids: Iterable[str] | None = None, match: str | None = None,
               hook: DeletionHook | None = None) -> DeletionResult:
        """Delete samples by id and/or by case-insensitive substring of question or answer.

        One transaction: mark samples deleted, truncate affected sequences, pick each affected
        shard's surviving sequence with the longest exact prefix (or mark it for retraining), log
        the request. Ids that are already deleted are skipped; if nothing new is left, nothing is
        written (idempotent). `hook(step)` runs after each step (tests inject crashes there).
        """
        ids = list(ids or [])
        if not ids and not match:
            raise UnlearnError("nothing to delete: give sample ids (--ids) or a text to match (--match)")

        def write(con):
            wanted: list[str] = []
            for sid in ids:
                if con.execute("SELECT 1 FROM samples WHERE sample_id = ?", (sid,)).fetchone() is None:
                    raise UnlearnError(f"unknown sample id '{sid}': nothing was deleted")
                if sid not in wanted:
                    wanted.append(sid)
            if match:
                needle, digest = match.lower(), text_hash(match)
                rows = con.execute(
                    "SELECT sample_id FROM samples WHERE instr(lower(question), ?) > 0 OR instr(lower(answer), ?) > 0 "
                    "OR question_hash = ? OR answer_hash = ? ORDER BY rowid", (needle, needle, digest, digest)).fetchall()
                found = [r[0] for r in rows]
                for (earlier,) in con.execute("SELECT sample_ids FROM deletions WHERE query_hash = ?", (digest,)):
                    found += json.loads(earlier)  # the same query again, after its text was purged
                if not found:
                    texts = [t for row in con.execute("SELECT question, answer FROM samples") for t in row]
                    close = close_phrases(match, texts)
                    hint = f"; close names: {', '.join(close)}" if close else ""
                    raise UnlearnError(f"no sample's question or answer contains '{match}': nothing was deleted{hint}")
                wanted += [sid for sid in dict.fromkeys(found) if sid not in wanted]
            fresh = [s for s in wanted if con.execute(
                "SELECT deleted_by IS NULL FROM samples WHERE sample_id = ?", (s,)).fetchone()[0]]
            already = [s for s in wanted if s not in fresh]
            if not fresh:
                return DeletionResult(None, "already_deleted", [], already, [], [], {})
            cur = con.execute(
                "INSERT INTO deletions (requested_at, sample_ids, query, query_hash, status, pid) VALUES (?,?,?,?,?,?)",
                (_now(), json.dumps(fresh), match, text_hash(match) if match else None, "in_progress", os.getpid()))
            request_id = cur.lastrowid
            con.executemany("UPDATE samples SET deleted_by = ? WHERE sample_id = ?", [(request_id, s) for s in fresh])
            shards = sorted({con.execute("SELECT shard FROM samples WHERE sample_id = ?", (s,)).fetchone()[0]
                             for s in fresh})
            _step(hook, "marked")
            for shard in shards:
                _refresh_prefixes(con, shard)
            _step(hook, "truncated")
            serving = {shard: _choose_serving(con, shard, request_id) for shard in shards}
            retrain = [s for s, (_, prefix) in serving.items() if prefix == 0]
            _step(hook, "served")
            con.execute("UPDATE deletions SET status = ?, affected_shards = ?, retrain_shards = ? WHERE request_id = ?",
                        ("retrain_pending" if retrain else "applied", json.dumps(shards), json.dumps(retrain),
                         request_id))
            return DeletionResult(request_id, "applied", fresh, already, shards, retrain, serving)

        return self._transaction(write)


_STAGE_SELECT = ("SELECT stage_id, shard, sequence, stage, generation, slices, checkpoint, sha256, weights_sha256, "
                 "seed, num_samples FROM stages")


def _stage_record(row) -> StageRecord:
    return StageRecord(stage_id=row[0], shard=row[1], sequence=row[2], stage=row[3], generation=row[4],
                       slices=json.loads(row[5]), checkpoint=row[6], sha256=row[7], weights_sha256=row[8], seed=row[9],
                       num_samples=row[10])


def _step(hook: DeletionHook | None, name: str) -> None:
    if hook is not None:
        hook(name)


def _refresh_prefixes(con: sqlite3.Connection, shard: int) -> None:
    """valid_prefix of each sequence = number of leading stages (current generation) that saw no deleted sample."""
    for sequence, generation in con.execute(
            "SELECT sequence, generation FROM sequences WHERE shard = ?", (shard,)).fetchall():
        stages = con.execute(
            "SELECT st.stage, (SELECT COUNT(*) FROM stage_samples ss JOIN samples s ON s.sample_id = ss.sample_id "
            "                  WHERE ss.stage_id = st.stage_id AND s.deleted_by IS NOT NULL) "
            "FROM stages st WHERE st.shard = ? AND st.sequence = ? AND st.generation = ? ORDER BY st.stage",
            (shard, sequence, generation)).fetchall()
        prefix = 0
        for stage, dirty in stages:
            if stage != prefix + 1 or dirty:
                break
            prefix = stage
        con.execute("UPDATE sequences SET valid_prefix = ? WHERE shard = ? AND sequence = ?",
                    (prefix, shard, sequence))


def _choose_serving(con: sqlite3.Connection, shard: int, request_id: int | None) -> tuple[int | None, int]:
    """Serve the sequence with the longest valid prefix; ties keep the current one, then the lowest index."""
    current = con.execute("SELECT sequence FROM serving WHERE shard = ?", (shard,)).fetchone()
    current = current[0] if current else None
    rows = con.execute("SELECT sequence, valid_prefix, generation FROM sequences WHERE shard = ?",
                       (shard,)).fetchall()
    best = max(rows, key=lambda r: (r[1], r[0] == current, -r[0]))
    sequence, prefix, generation = best
    stage_id = None
    if prefix > 0:
        stage_id = con.execute(
            "SELECT stage_id FROM stages WHERE shard = ? AND sequence = ? AND stage = ? AND generation = ?",
            (shard, sequence, prefix, generation)).fetchone()[0]
    else:
        sequence = None
    status = "serving" if prefix > 0 else "needs_retrain"
    con.execute(
        "INSERT INTO serving (shard, sequence, prefix, generation, stage_id, status, updated_by, updated_at) "
        "VALUES (?,?,?,?,?,?,?,?) ON CONFLICT(shard) DO UPDATE SET sequence = excluded.sequence, "
        "prefix = excluded.prefix, generation = excluded.generation, stage_id = excluded.stage_id, "
        "status = excluded.status, updated_by = excluded.updated_by, updated_at = excluded.updated_at",
        (shard, sequence, prefix, generation, stage_id, status, request_id, _now()))
    return sequence, prefix


def _settle_deletions(con: sqlite3.Connection) -> None:
    """Requests waiting on a retrain are applied once none of their shards needs one."""
    pending = {r[0] for r in con.execute("SELECT shard FROM serving WHERE status = 'needs_retrain'")}
    for request_id, shards in con.execute(
            "SELECT request_id, retrain_shards FROM deletions WHERE status = 'retrain_pending'").fetchall():
        if not pending & set(json.loads(shards)):
            con.execute("UPDATE deletions SET status = 'applied' WHERE request_id = ?", (request_id,))

