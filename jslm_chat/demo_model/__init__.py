"""The offline demo model: a tiny Llama-2-style Japanese chat model built from bundled text.

It lets the app, the tests and the benchmarks run with no network and no 13 GB download. A
sentencepiece BPE tokenizer (byte fallback, like Llama-2's) and a ~0.8M-parameter
``LlamaForCausalLM`` are trained on ``assets/demo_corpus_ja.txt`` in 20-25 s on two CPU cores.
The training conversations are rendered and encoded by the app's own Llama-2 prompt code, with
the app's default system prompt, so the model answers in (memorised, often garbled) Japanese, in
later turns too, and ends its reply with EOS. It knows nothing: it is for checking the plumbing,
never the answers.

Modules: ``recipe`` (every setting that decides the bytes, and the build key), ``corpus`` (the
Q/A text and the training conversations), ``tokenizer``, ``training``, ``build`` (one folder),
``cache`` (build once, under a lock) and ``__main__`` (the CLI).

``demo_model_dir()`` builds it once into a cache folder and reuses it. Run
``python -m jslm_chat.demo_model --out DIR`` to write one somewhere else.
"""

from jslm_chat.demo_model.build import build_demo_model
from jslm_chat.demo_model.cache import demo_model_dir
from jslm_chat.demo_model.corpus import load_corpus, training_samples
from jslm_chat.demo_model.recipe import CORPUS_PATH, DEFAULT_TRAIN_STEPS

__all__ = [
    "CORPUS_PATH",
    "DEFAULT_TRAIN_STEPS",
    "build_demo_model",
    "demo_model_dir",
    "load_corpus",
    "training_samples",
]
