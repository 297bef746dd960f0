import sys

from recbole_llm.compare.command import main

sys.exit(main())
