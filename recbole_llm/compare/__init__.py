"""One command that compares models on the same split, protocol and seeds
(``python run_recbole_llm.py --compare --models=SASRec,EIMF --dataset=ml-100k``)."""
from recbole_llm.compare.command import Plan, compare, main, parse

__all__ = ["Plan", "compare", "main", "parse"]
