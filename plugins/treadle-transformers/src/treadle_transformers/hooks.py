"""treadle-transformers' entry point: the task names and their options (no transformers import).

The options keep the names of transformers' example scripts as aliases (``--model_name_or_path``,
``--train_file``, ``--max_seq_length``, ...), stored as ``transformers_*`` fields.
"""

from treadle import hookimpl

TASKS = {
    "text-classification": ("text_classification", "fine-tune a sequence classifier on csv/json/jsonl/parquet files"),
    "causal-lm": ("causal_lm", "train a causal language model on text / jsonl files, in blocks of --block_size tokens"),
    "seq2seq": ("seq2seq", "train an encoder-decoder on source/target columns; evaluates with generate"),
}

OPTIONS = (
    # name, type, default, help
    ("model_name_or_path", str, None, "Local directory (or hub id) of the model or of its config.json; a config alone starts from random weights."),
    ("tokenizer_name", str, None, "Directory of the tokenizer when it is not next to the model."),
    ("train_file", str, None, "Training data: .csv, .json, .jsonl, .txt or .parquet."),
    ("validation_file", str, None, "Evaluation data, same formats."),
    ("test_file", str, None, "Prediction data for `treadle predict`, same formats."),
    ("text_column", str, None, "Column holding the text (default: 'text', 'sentence', or the first string column)."),
    ("text_pair_column", str, None, "Second text column for sentence-pair classification."),
    ("label_column", str, "label", "Column holding the class label (text-classification)."),
    ("max_seq_length", int, 128, "Longest tokenized input; longer ones are truncated."),
    ("block_size", int, 128, "causal-lm: tokens per training block (texts are concatenated, then cut in blocks)."),
    ("source_column", str, "source", "seq2seq: column of the input text."),
    ("target_column", str, "target", "seq2seq: column of the text to produce."),
    ("max_target_length", int, 128, "seq2seq: longest tokenized target."),
    ("source_prefix", str, "", "seq2seq: text put before every source (e.g. 'summarize: ' for T5)."),
    ("preprocessing_num_workers", int, None, "Processes for tokenizing the data (datasets' map)."),
    ("overwrite_cache", bool, False, "Tokenize again instead of reusing datasets' cache of an earlier run."),
)


@hookimpl
def treadle_register_tasks(register):
    for name, (function, description) in TASKS.items():
        register(name, f"treadle_transformers.tasks:{function}", requires=("transformers", "datasets"), description=description)


@hookimpl
def treadle_add_arguments(schema):
    for name, kind, default, text in OPTIONS:
        schema.add(f"transformers_{name}", type=kind, default=default, help=text, aliases=(name,))


@hookimpl
def treadle_validate_arguments(args):
    if args.task not in TASKS:
        return None
    problems = []
    if not args.transformers_model_name_or_path:
        problems.append(f"--task {args.task} needs --model_name_or_path (a model or config directory)")
    files = (args.transformers_train_file, args.transformers_validation_file, args.transformers_test_file)
    if not any(files):
        problems.append(f"--task {args.task} needs data: --train_file (and --validation_file to evaluate, --test_file to predict)")
    for field in ("transformers_max_seq_length", "transformers_block_size", "transformers_max_target_length"):
        if getattr(args, field) is not None and getattr(args, field) < 1:
            problems.append(f"--{field.removeprefix('transformers_')} must be at least 1")
    return problems


@hookimpl
def treadle_report_env():
    from importlib.metadata import PackageNotFoundError, version

    lines = []
    for name in ("transformers", "datasets", "tokenizers"):
        try:
            lines.append((name, version(name)))
        except PackageNotFoundError:
            lines.append((name, "not installed"))
    return lines
