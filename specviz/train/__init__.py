"""Reproducible training pipeline for specviz's bundled models.

Three steps, one command each (see ``specviz/train/README.md``)::

    python -m specviz.train.corpus    --out .train_data
    python -m specviz.train.tokenizer --data .train_data
    python -m specviz.train.train_lm  --preset base  --data .train_data --out .train_data/runs/base
    python -m specviz.train.train_lm  --preset draft --data .train_data --out .train_data/runs/draft

The corpus is the ``.py`` files of the running interpreter's standard library;
a fixed list of modules (and their tests) is held out for evaluation.
"""
