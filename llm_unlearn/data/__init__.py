"""Data: TOFU loading, raw-text corpora (chunking), the fictitious technical domain, the synthetic fictitious-author generator, QA tokenisation, pairing."""

from llm_unlearn.data.corpus import ChunkReport, check_input_kinds, chunk_corpus, load_corpus
from llm_unlearn.data.domain import generate_domain, write_domain
from llm_unlearn.data.pairing import ForgetRetainDataset, PairedCollator, check_no_overlap
from llm_unlearn.data.protocol import PROTOCOLS, Protocol, get_protocol
from llm_unlearn.data.qa import (
    IGNORE_INDEX,
    GenerationCollator,
    QACollator,
    build_prompt,
    encode_qa,
    tokenize_qa_dataset,
)
from llm_unlearn.data.synthetic import generate as generate_synthetic
from llm_unlearn.data.synthetic import write_splits
from llm_unlearn.data.tofu import load_tofu, matching_retain_split, read_refusals

__all__ = [
    "ChunkReport", "check_input_kinds", "chunk_corpus", "generate_domain", "load_corpus", "write_domain",
    "IGNORE_INDEX", "PROTOCOLS", "ForgetRetainDataset", "Protocol", "get_protocol", "GenerationCollator", "PairedCollator", "QACollator", "build_prompt",
    "check_no_overlap", "encode_qa", "generate_synthetic", "load_tofu", "matching_retain_split", "read_refusals",
    "tokenize_qa_dataset", "write_splits",
]
