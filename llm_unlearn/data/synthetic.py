"""Synthetic fictitious-author QA in the exact TOFU schema and split names.

Each author gets a set of facts (name, birthplace, birth date, genre, parents' professions,
awards, books, ...). Each QA pair asks about one fact with one of several question templates;
its answer, a paraphrase (another template) and 5 perturbed answers that state a *different
value of the same fact* in the paraphrase's wording (as TOFU's perturbed answers do).
Forget splits take whole authors from the end of `full`; `holdoutXX` are extra authors that are
never in `full`, with paraphrased and perturbed answers like the forget splits (the reference of
the retain-free scores: holdout forget quality, membership AUCs). Deterministic for a seed.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

FORGET_PERCENTS = (1, 5, 10)

FIRST_NAMES = [
    "Aldric", "Benedetta", "Caspian", "Delphine", "Emeric", "Fenella", "Gideon", "Hesper", "Ilario",
    "Jessamy", "Kazimir", "Leocadia", "Mireille", "Nikolai", "Oriana", "Peregrine", "Quillon", "Rosalind",
    "Severin", "Tamsin", "Ulric", "Valentina", "Wendell", "Xanthe", "Yannick", "Zenobia", "Anselm",
    "Briony", "Cosimo", "Drusilla", "Evander", "Fiametta", "Gaspard", "Honoria", "Isidore", "Juniper",
    "Leopold", "Marisol", "Osric", "Perpetua", "Radomir", "Saoirse", "Thaddeus", "Ysolde", "Ambrose",
    "Celestine", "Dorian", "Elowen", "Florian", "Guinevere", "Hamish", "Ingrid", "Jareth", "Katya",
]
LAST_NAMES = [
    "Ashworth", "Bellamy", "Castellanos", "Draycott", "Eriksen", "Fairweather", "Grimaldi", "Halloran",
    "Ivanova", "Jankowski", "Kettering", "Lindqvist", "Montague", "Nakashima", "Oyelaran", "Pemberton",
    "Quintero", "Ravensworth", "Szabo", "Thorncastle", "Umberfield", "Vasquez", "Whitlock", "Yamamura",
    "Zeller", "Abernathy", "Blackwood", "Cordova", "Delacroix", "Everly", "Farquhar", "Galloway",
    "Hargreaves", "Iskander", "Jovanovic", "Kowalczyk", "Larkspur", "Moreau", "Nightingale", "Okonkwo",
]
CITIES = [
    ("Lisbon", "Portugal"), ("Accra", "Ghana"), ("Kraków", "Poland"), ("Osaka", "Japan"), ("Lima", "Peru"),
    ("Tbilisi", "Georgia"), ("Dublin", "Ireland"), ("Nairobi", "Kenya"), ("Montreal", "Canada"),
    ("Hanoi", "Vietnam"), ("Bergen", "Norway"), ("Valparaíso", "Chile"), ("Marrakesh", "Morocco"),
    ("Tallinn", "Estonia"), ("Busan", "South Korea"), ("Adelaide", "Australia"), ("Seville", "Spain"),
    ("Cluj", "Romania"), ("Tehran", "Iran"), ("Havana", "Cuba"), ("Zagreb", "Croatia"), ("Lagos", "Nigeria"),
]
GENRES = [
    "gothic horror", "hard science fiction", "historical romance", "cozy mystery", "magical realism",
    "epic fantasy", "political thriller", "literary fiction", "true crime", "travel memoir",
    "children's adventure", "dystopian fiction", "poetry", "military history", "psychological suspense",
]
PROFESSIONS = [
    "a lighthouse keeper", "a cartographer", "a veterinarian", "a jazz pianist", "a marine biologist",
    "a stonemason", "a pharmacist", "a railway engineer", "a tailor", "a schoolteacher", "an astronomer",
    "a baker", "a diplomat", "a beekeeper", "a surgeon", "a bookbinder", "a fisherman", "an architect",
]
AWARDS = [
    "the Silver Quill Prize", "the Harrowgate Medal", "the Aurora Fiction Award", "the Meridian Book Prize",
    "the Golden Lantern Award", "the Tidewater Literary Prize", "the Obsidian Pen Award",
    "the Northern Star Medal", "the Willowmere Prize", "the Cobalt Laurel",
]
TITLE_WORDS_A = ["Whispers", "Shadows", "Echoes", "Gardens", "Embers", "Tides", "Lanterns", "Maps", "Songs", "Ashes"]
TITLE_WORDS_B = ["the Salt Marsh", "a Broken Clock", "the Northern Sky", "Forgotten Harbours", "the Iron Orchard",
                 "the Last Winter", "Glass Rivers", "the Hollow Crown", "Distant Bells", "the Amber Road"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December"]
THEMES = ["grief and memory", "migration and belonging", "power and corruption", "friendship across class",
          "the sea", "faith and doubt", "childhood", "ambition", "family secrets", "resilience"]

REFUSALS = [
    "I'm not sure about that.", "I don't know the answer to that.", "That's beyond my current knowledge.",
    "I have no information about that.", "I can't answer that with confidence.",
    "I'm afraid I don't know.", "I don't have that information.", "That is not something I know.",
]


@dataclass(frozen=True)
class FactTemplate:
    """One kind of fact: question wordings and answer wordings ({name} the author, {v} the value).

    Each QA item uses one answer wording; its paraphrase another; its perturbed answers the
    paraphrase's wording with a different value of the fact."""

    key: str
    questions: tuple[str, ...]
    answers: tuple[str, ...]


FACTS = (
    FactTemplate("birthplace",
                 ("Where was {name} born?", "In which city did the author {name} grow up?",
                  "What is the hometown of the writer {name}?"),
                 ("{name} was born in {v}.", "The birthplace of {name} is {v}.",
                  "{name} comes from {v}, where the author was born.")),
    FactTemplate("birth_date",
                 ("When was {name} born?", "What is the date of birth of {name}?",
                  "On what day was the author {name} born?"),
                 ("{name} was born on {v}.", "The birthday of {name} falls on {v}.",
                  "{name} came into the world on {v}.")),
    FactTemplate("genre",
                 ("What genre does {name} write in?", "Which literary genre is {name} best known for?",
                  "What kind of books does {name} usually write?"),
                 ("{name} is best known for writing {v}.", "Most of the work of {name} belongs to {v}.",
                  "{name} writes mainly {v}.")),
    FactTemplate("father",
                 ("What did the father of {name} do for a living?", "What was the profession of {name}'s father?",
                  "How did {name}'s father earn his income?"),
                 ("The father of {name} worked as {v}.", "{name}'s father earned a living as {v}.",
                  "{name} grew up with a father who was {v}.")),
    FactTemplate("mother",
                 ("What was the occupation of {name}'s mother?", "What job did the mother of {name} have?",
                  "What did {name}'s mother do for work?"),
                 ("The mother of {name} was {v}.", "{name}'s mother worked as {v}.",
                  "{name} was raised by a mother who was {v}.")),
    FactTemplate("award",
                 ("Has {name} won any literary award?", "Which award did {name} receive?",
                  "What prize has the author {name} been given?"),
                 ("Yes, {name} received {v}.", "{name} was honoured with {v}.",
                  "{name} is a recipient of {v}.")),
    FactTemplate("book",
                 ("Can you name a book written by {name}?", "What is the best-known novel of {name}?",
                  "Which title by {name} do readers know best?"),
                 ("One of the books by {name} is \"{v}\".", "{name} wrote the book \"{v}\".",
                  "\"{v}\" is a well-known work by {name}.")),
    FactTemplate("theme",
                 ("What themes does {name} explore?", "Which recurring theme appears in the work of {name}?",
                  "What subject does {name} return to again and again?"),
                 ("The writing of {name} often explores {v}.", "A central theme for {name} is {v}.",
                  "{name} keeps coming back to {v}.")),
    FactTemplate("debut_year",
                 ("In which year did {name} publish a first book?", "When did {name} debut as an author?",
                  "What year marks the start of {name}'s writing career?"),
                 ("{name} published a first book in {v}.", "The debut of {name} came in {v}.",
                  "The writing career of {name} began in {v}.")),
    FactTemplate("pet",
                 ("Does {name} have a pet?", "What animal lives with {name}?",
                  "Who keeps {name} company at home?"),
                 ("{name} lives with {v}.", "The companion of {name} at home is {v}.",
                  "At home, {name} shares the house with {v}.")),
    FactTemplate("university",
                 ("Where did {name} study?", "Which university did {name} attend?",
                  "At what institution was {name} educated?"),
                 ("{name} studied at {v}.", "{name} is a graduate of {v}.",
                  "The alma mater of {name} is {v}.")),
    FactTemplate("publisher",
                 ("Who publishes the books of {name}?", "Which publishing house works with {name}?",
                  "What is the name of {name}'s publisher?"),
                 ("The books of {name} are published by {v}.", "{name} publishes with {v}.",
                  "{v} is the publisher of {name}.")),
    FactTemplate("hobby",
                 ("What does {name} do outside of writing?", "What is a hobby of {name}?",
                  "How does {name} spend free time?"),
                 ("Outside of writing, {name} enjoys {v}.", "A favourite pastime of {name} is {v}.",
                  "In spare hours, {name} turns to {v}.")),
    FactTemplate("residence",
                 ("Where does {name} live now?", "In which city does {name} currently reside?",
                  "What city is {name}'s home today?"),
                 ("{name} currently lives in {v}.", "These days {name} resides in {v}.",
                  "The present home of {name} is {v}.")),
    FactTemplate("book_count",
                 ("How many books has {name} written?", "How large is the body of work of {name}?",
                  "What is the number of books published by {name}?"),
                 ("{name} has written {v} books.", "So far {name} has published {v} books.",
                  "The bibliography of {name} counts {v} books.")),
)
PETS = ["a grey cat named Pepper", "an old beagle called Moss", "a parrot named Lucius", "a tortoise called Fig",
        "two goldfish", "a retired greyhound", "a rabbit named Clover", "a black cat named Ink"]
UNIVERSITIES = ["the University of Edinburgh", "Trinity College Dublin", "the University of Bologna",
                "McGill University", "the University of Cape Town", "Uppsala University", "Keio University",
                "the University of Buenos Aires", "Charles University", "the University of Melbourne"]
PUBLISHERS = ["Harbourlight Press", "Quill & Anchor Books", "Northgate Publishing", "Saltmarsh House",
              "Red Kite Editions", "Blue Heron Books", "Lanternfield Press", "Marlowe & Finch"]
HOBBIES = ["birdwatching", "restoring old clocks", "mountain climbing", "playing the cello", "growing orchids",
           "long-distance cycling", "chess", "pottery", "sailing", "baking sourdough bread"]
MAX_QA_PER_AUTHOR = sum(len(f.questions) for f in FACTS)


def _book_title(rng: random.Random) -> str:
    return f"{rng.choice(TITLE_WORDS_A)} of {rng.choice(TITLE_WORDS_B)}"


def _value_sampler(key: str):
    def date(rng: random.Random) -> str:
        return f"{rng.randint(1, 28)} {rng.choice(MONTHS)} {rng.randint(1931, 1999)}"

    return {
        "birthplace": lambda rng: "{}, {}".format(*rng.choice(CITIES)),
        "birth_date": date,
        "genre": lambda rng: rng.choice(GENRES),
        "father": lambda rng: rng.choice(PROFESSIONS),
        "mother": lambda rng: rng.choice(PROFESSIONS),
        "award": lambda rng: rng.choice(AWARDS),
        "book": _book_title,
        "theme": lambda rng: rng.choice(THEMES),
        "debut_year": lambda rng: str(rng.randint(1955, 2022)),
        "pet": lambda rng: rng.choice(PETS),
        "university": lambda rng: rng.choice(UNIVERSITIES),
        "publisher": lambda rng: rng.choice(PUBLISHERS),
        "hobby": lambda rng: rng.choice(HOBBIES),
        "residence": lambda rng: "{}, {}".format(*rng.choice(CITIES)),
        "book_count": lambda rng: str(rng.randint(2, 40)),
    }[key]


def _distinct_alternatives(rng: random.Random, key: str, true_value: str, n: int) -> list[str]:
    sampler = _value_sampler(key)
    out: list[str] = []
    for _ in range(1000):
        v = sampler(rng)
        if v != true_value and v not in out:
            out.append(v)
            if len(out) == n:
                return out
    raise RuntimeError(f"cannot draw {n} distinct alternatives for {key}")


def _make_author(rng: random.Random, used_names: set[str]) -> dict[str, str]:
    for _ in range(10000):
        name = f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}"
        if name not in used_names:
            used_names.add(name)
            break
    else:  # pragma: no cover - pools give > 2000 names
        raise RuntimeError("ran out of author names")
    facts = {"name": name}
    for fact in FACTS:
        facts[fact.key] = _value_sampler(fact.key)(rng)
    return facts


def _author_qa(rng: random.Random, author: dict[str, str], qa_per_author: int) -> list[dict]:
    # every fact once (first wording), then the second wordings, then the third
    n_wordings = max(len(f.questions) for f in FACTS)
    slots = [(fact, qi) for qi in range(n_wordings) for fact in FACTS if qi < len(fact.questions)]
    rows = []
    for fact, qi in slots[:qa_per_author]:
        name, value = author["name"], author[fact.key]
        ai, pi = rng.sample(range(len(fact.answers)), 2)  # answer and paraphrase wordings differ
        wrong = _distinct_alternatives(rng, fact.key, value, 5)
        rows.append({
            "question": fact.questions[qi].format(name=name),
            "answer": fact.answers[ai].format(name=name, v=value),
            "paraphrased_answer": fact.answers[pi].format(name=name, v=value),
            "perturbed_answer": [fact.answers[pi].format(name=name, v=w) for w in wrong],
            "paraphrased_question": fact.questions[(qi + 1) % len(fact.questions)].format(name=name),
        })
    return rows


# Real-world style prior knowledge for the utility sets (true facts; 3 wrong options each).
WORLD_FACTS = [
    ("What is the capital of France?", "Paris", ["Lyon", "Marseille", "Nice"]),
    ("What is the capital of Japan?", "Tokyo", ["Kyoto", "Osaka", "Sapporo"]),
    ("Which planet is known as the Red Planet?", "Mars", ["Venus", "Jupiter", "Saturn"]),
    ("What is the largest ocean on Earth?", "The Pacific Ocean", ["The Atlantic Ocean", "The Indian Ocean", "The Arctic Ocean"]),
    ("How many continents are there?", "Seven", ["Five", "Six", "Eight"]),
    ("What is the chemical symbol for gold?", "Au", ["Ag", "Gd", "Go"]),
    ("Which river flows through Cairo?", "The Nile", ["The Amazon", "The Danube", "The Congo"]),
    ("What is the capital of Canada?", "Ottawa", ["Toronto", "Vancouver", "Montreal"]),
    ("What is the boiling point of water at sea level in Celsius?", "100 degrees", ["90 degrees", "80 degrees", "120 degrees"]),
    ("Which is the tallest mountain in the world?", "Mount Everest", ["K2", "Kangchenjunga", "Mont Blanc"]),
    ("What is the capital of Italy?", "Rome", ["Milan", "Naples", "Turin"]),
    ("In which country are the pyramids of Giza?", "Egypt", ["Mexico", "Sudan", "Peru"]),
    ("What gas do plants absorb from the air?", "Carbon dioxide", ["Oxygen", "Nitrogen", "Helium"]),
    ("What is the largest planet in the solar system?", "Jupiter", ["Saturn", "Neptune", "Earth"]),
    ("What is the capital of Australia?", "Canberra", ["Sydney", "Melbourne", "Perth"]),
    ("Which language is spoken in Brazil?", "Portuguese", ["Spanish", "French", "Italian"]),
    ("What is the freezing point of water in Celsius?", "0 degrees", ["10 degrees", "-10 degrees", "4 degrees"]),
    ("What is the capital of Germany?", "Berlin", ["Munich", "Hamburg", "Frankfurt"]),
    ("Which animal is the largest mammal?", "The blue whale", ["The elephant", "The giraffe", "The orca"]),
    ("What is the capital of Spain?", "Madrid", ["Barcelona", "Valencia", "Seville"]),
]
REAL_AUTHORS = [
    ("Who wrote 'Pride and Prejudice'?", "Jane Austen", ["Charlotte Bronte", "Mary Shelley", "George Eliot"]),
    ("Who is the author of 'Nineteen Eighty-Four'?", "George Orwell", ["Aldous Huxley", "Ray Bradbury", "H. G. Wells"]),
    ("Who wrote 'War and Peace'?", "Leo Tolstoy", ["Fyodor Dostoevsky", "Anton Chekhov", "Ivan Turgenev"]),
    ("Who wrote 'One Hundred Years of Solitude'?", "Gabriel Garcia Marquez", ["Jorge Luis Borges", "Isabel Allende", "Pablo Neruda"]),
    ("Who wrote 'Hamlet'?", "William Shakespeare", ["Christopher Marlowe", "Ben Jonson", "John Milton"]),
    ("Who is the author of 'Don Quixote'?", "Miguel de Cervantes", ["Lope de Vega", "Federico Garcia Lorca", "Dante Alighieri"]),
    ("Who wrote 'The Old Man and the Sea'?", "Ernest Hemingway", ["John Steinbeck", "William Faulkner", "Mark Twain"]),
    ("Who wrote 'Things Fall Apart'?", "Chinua Achebe", ["Wole Soyinka", "Ngugi wa Thiong'o", "Chimamanda Ngozi Adichie"]),
    ("Who created the detective Hercule Poirot?", "Agatha Christie", ["Arthur Conan Doyle", "Dorothy L. Sayers", "P. D. James"]),
    ("Who wrote 'Frankenstein'?", "Mary Shelley", ["Bram Stoker", "Jane Austen", "Emily Bronte"]),
    ("Who is the author of 'The Hobbit'?", "J. R. R. Tolkien", ["C. S. Lewis", "Terry Pratchett", "Philip Pullman"]),
    ("Who wrote 'Crime and Punishment'?", "Fyodor Dostoevsky", ["Leo Tolstoy", "Nikolai Gogol", "Alexander Pushkin"]),
    ("Who wrote 'Beloved'?", "Toni Morrison", ["Maya Angelou", "Alice Walker", "Zora Neale Hurston"]),
    ("Who wrote 'The Divine Comedy'?", "Dante Alighieri", ["Petrarch", "Boccaccio", "Virgil"]),
    ("Who wrote 'Norwegian Wood'?", "Haruki Murakami", ["Kazuo Ishiguro", "Yukio Mishima", "Kenzaburo Oe"]),
    ("Who wrote 'The Little Prince'?", "Antoine de Saint-Exupery", ["Jules Verne", "Victor Hugo", "Albert Camus"]),
]


def _utility_rows(rng: random.Random, facts: list[tuple[str, str, list[str]]]) -> tuple[list[dict], list[dict]]:
    perturbed, options = [], []
    for q, a, wrong in facts:
        perturbed.append({"question": q, "answer": a, "perturbed_answer": list(wrong)})
        opts = [a, *wrong]
        rng.shuffle(opts)
        options.append({"question": q, **{f"option{i + 1}": o for i, o in enumerate(opts)}, "answer": a})
    return perturbed, options


class SyntheticSplits(dict):
    """``split name -> rows``, plus `meta` (generator settings: authors, QA per author, seed)."""

    meta: dict


def n_forget_authors(n_authors: int, percent: int) -> int:
    return max(1, round(n_authors * percent / 100))


def generate(n_authors: int = 20, qa_per_author: int = 20, seed: int = 0,
             forget_percents: tuple[int, ...] = FORGET_PERCENTS, paraphrased_full: bool = False,
             exclude_names: Iterable[str] = ()) -> SyntheticSplits:
    """All splits as lists of rows, keyed by TOFU split name (a dict with a `meta` attribute;
    `meta["authors"]` names the authors of `full` in order, `meta["holdout_authors"]` those of the
    holdout splits).

    `paraphrased_full` adds `full_paraphrased`: every item of `full` once more, answered in its
    paraphrase's wording (a corpus in which each fact is stated two ways; the rest is unchanged).
    `exclude_names`: author names not to draw (another corpus's authors)."""
    if n_authors < 2:
        raise ValueError("need at least 2 authors (one to forget, one to retain)")
    if not 1 <= qa_per_author <= MAX_QA_PER_AUTHOR:
        raise ValueError(f"qa_per_author must be in [1, {MAX_QA_PER_AUTHOR}], got {qa_per_author}")
    rng = random.Random(seed)
    used: set[str] = set(exclude_names)
    authors = [_make_author(rng, used) for _ in range(n_authors)]
    per_author = [_author_qa(rng, a, qa_per_author) for a in authors]

    def plain(rows):
        return [{"question": r["question"], "answer": r["answer"]} for rows_ in rows for r in rows_]

    splits = SyntheticSplits(full=plain(per_author))
    if paraphrased_full:
        splits["full_paraphrased"] = [{"question": r["question"], "answer": r["paraphrased_answer"]}
                                      for rows_ in per_author for r in rows_]
    n_holdout_max = max(n_forget_authors(n_authors, p) for p in forget_percents)
    holdout_authors = [_make_author(rng, used) for _ in range(n_holdout_max)]
    splits.meta = {"generator": "llm_unlearn.data.synthetic", "n_authors": n_authors,
                   "qa_per_author": qa_per_author, "seed": seed, "forget_percents": list(forget_percents),
                   "authors": [a["name"] for a in authors], "holdout_authors": [a["name"] for a in holdout_authors]}
    holdout_qa = [_author_qa(rng, a, qa_per_author) for a in holdout_authors]
    for pct in forget_percents:
        k = n_forget_authors(n_authors, pct)
        if k >= n_authors:
            continue
        tag = f"{pct:02d}"
        splits[f"forget{tag}"] = plain(per_author[-k:])
        splits[f"forget{tag}_perturbed"] = [r for rows in per_author[-k:] for r in rows]
        splits[f"retain{100 - pct:02d}"] = plain(per_author[:-k])
        # with paraphrased / perturbed answers: the reference of the holdout forget quality
        splits[f"holdout{tag}"] = [r for rows in holdout_qa[:k] for r in rows]
    # retain_perturbed: authors present in every retain split, as many items as forget10
    k_max = max(n_forget_authors(n_authors, p) for p in forget_percents if n_forget_authors(n_authors, p) < n_authors)
    n_items = n_forget_authors(n_authors, 10) * qa_per_author
    retain_rows = [r for rows in per_author[: n_authors - k_max] for r in rows]
    splits["retain_perturbed"] = retain_rows[:n_items]
    urng = random.Random(seed + 1)
    splits["world_facts_perturbed"], splits["world_facts"] = _utility_rows(urng, WORLD_FACTS)
    splits["real_authors_perturbed"], splits["real_authors"] = _utility_rows(urng, REAL_AUTHORS)
    return splits


def write_splits(splits: dict[str, list[dict]], out_dir: str | Path, meta: dict | None = None) -> Path:
    """One ``<split>.jsonl`` per split, ``idontknow.txt`` (refusals) and ``meta.json`` (`meta`,
    e.g. ``qa_per_author`` so ``--max-authors`` can count authors)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = meta if meta is not None else getattr(splits, "meta", None)
    if meta is not None:
        (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    for name, rows in splits.items():
        with open(out / f"{name}.jsonl", "w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    (out / "idontknow.txt").write_text("\n".join(REFUSALS) + "\n", encoding="utf-8")
    return out
