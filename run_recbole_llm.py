"""Command line, as RecBole's run_recbole.py:

    python run_recbole_llm.py --model=SASRec --dataset=ml-100k --epochs=2
"""
import sys

from recbole_llm.quick_start import main

if __name__ == "__main__":
    sys.exit(main())
