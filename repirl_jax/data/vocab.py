"""A small word-level tokenizer built from a corpus: words, single digits, single punctuation
marks, spaces and newlines are tokens, so decoding reproduces the text exactly. It is a real
`tokenizers` tokenizer wrapped as a transformers `PreTrainedTokenizerFast` (save_pretrained /
AutoTokenizer work, the loop and the exporter treat it like any other), with a one-line chat
template. Used by the demo, where a 50k-entry BPE vocabulary would cost more than the model."""
from __future__ import annotations

import re
from collections.abc import Iterable

PIECE = r"\d|[A-Za-z]+|\s|[^\sA-Za-z\d]"
SPECIALS = ("<pad>", "<unk>", "<|im_end|>")
# The prompt is the user's text; the answer starts on the line after "Answer:".
CHAT_TEMPLATE = ("{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}Answer:\n{% endif %}")


def build_tokenizer(texts: Iterable[str]):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = sorted({w for t in list(texts) + ["Answer:\n"] for w in re.findall(PIECE, t)})
    vocab = {w: i for i, w in enumerate(list(SPECIALS) + words)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(PIECE), behavior="isolated")
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", unk_token="<unk>", eos_token="<|im_end|>")
    tok.chat_template = CHAT_TEMPLATE
    return tok
