"""Problems (prompts, gold answers or tests, expert solutions) from tasks and real file formats."""
from . import chain, formats, packaged, prompts
from .records import INSTRUCTION, DataError, Problem, ReadReport, iter_jsonl, read_rows

__all__ = ["chain", "formats", "packaged", "prompts", "INSTRUCTION", "DataError", "Problem", "ReadReport", "iter_jsonl",
           "read_rows"]
