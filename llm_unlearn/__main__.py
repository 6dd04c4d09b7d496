"""`python -m llm_unlearn`: the `llm-unlearn` command."""

import sys

from llm_unlearn.cli import main

sys.exit(main())
