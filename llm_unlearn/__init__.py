"""llm-unlearn: make a language model forget specific training data, and measure it."""

__version__ = "0.1.0"

from llm_unlearn.data import (  # noqa: E402
    ForgetRetainDataset,
    PairedCollator,
    QACollator,
    encode_qa,
    generate_synthetic,
    load_tofu,
    tokenize_qa_dataset,
)
from llm_unlearn.errors import UnlearnError  # noqa: E402

__all__ = [
    "ForgetRetainDataset", "PairedCollator", "QACollator", "UnlearnError", "__version__", "encode_qa",
    "generate_synthetic", "load_tofu", "tokenize_qa_dataset",
]
