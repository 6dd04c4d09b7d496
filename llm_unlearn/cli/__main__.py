import sys

from llm_unlearn.cli import main

sys.exit(main())
