"""TrainingArguments and the rules that check it: the one schema every part of treadle reads.

``schema`` declares the fields (names, defaults, help, groups); ``rules`` coerces, applies
deprecated aliases, derives implied values and validates. The public names are here, so
``from treadle.args import TrainingArguments`` is all most code needs.
"""

from treadle.args.schema import DEPRECATED_ALIASES, GROUPS, TrainingArguments, TrainingArgumentsError, is_secret

__all__ = ["DEPRECATED_ALIASES", "GROUPS", "TrainingArguments", "TrainingArgumentsError", "is_secret"]
