"""CLIP byte-level BPE tokenizer, behaving like ``open_clip.tokenize`` (open_clip 2.7.0).

Works offline from the merges file shipped as package data
(``bpe_simple_vocab_16e6.txt.gz``). The text normalisation matters for parity:
``ftfy.fix_text`` (curly quotes, fullwidth letters, ligatures, mojibake),
``html.unescape`` twice, strip, whitespace collapse, lower-case.
"""
import gzip
import html
import os
from functools import lru_cache

import ftfy
import numpy as np
import regex

DEFAULT_BPE_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bpe_simple_vocab_16e6.txt.gz")
SOT_TEXT = "<start_of_text>"
EOT_TEXT = "<end_of_text>"
# 256 byte symbols + their word-final variants + 48894 merges + 2 specials = 49408.
_NUM_MERGES = 49152 - 256 - 2


@lru_cache()
def bytes_to_unicode():
    """Reversible map from every byte to a printable unicode character.

    Printable latin-1 bytes map to themselves; the rest (control chars, space, ...)
    are shifted to code points from 256 on, so BPE never sees whitespace/control chars.
    """
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    # Insertion order defines the first 256 vocab ids: printable bytes first, then the rest.
    mapping = {b: chr(b) for b in printable}
    others = [b for b in range(256) if b not in mapping]
    mapping.update({b: chr(256 + n) for n, b in enumerate(others)})
    return mapping


def basic_clean(text):
    text = ftfy.fix_text(text)
    # Entities can be double-escaped in scraped captions ("&amp;amp;").
    text = html.unescape(html.unescape(text))
    return text.strip()


def whitespace_clean(text):
    return regex.sub(r"\s+", " ", text).strip()


class SimpleTokenizer:
    def __init__(self, bpe_path=DEFAULT_BPE_PATH, special_tokens=None):
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {v: k for k, v in self.byte_encoder.items()}
        with gzip.open(bpe_path) as fh:
            lines = fh.read().decode("utf-8").split("\n")
        # First line is a version header; only the first _NUM_MERGES merges are used.
        merges = [tuple(line.split()) for line in lines[1:_NUM_MERGES + 1]]
        symbols = list(self.byte_encoder.values())
        vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
        specials = [SOT_TEXT, EOT_TEXT] + list(special_tokens or [])
        vocab += specials
        self.encoder = {tok: i for i, tok in enumerate(vocab)}
        self.decoder = {i: tok for tok, i in self.encoder.items()}
        self.bpe_ranks = {m: i for i, m in enumerate(merges)}
        self.cache = {t: t for t in specials}
        # Special tokens are matched first so that they are never split by BPE.
        special_pat = "|".join(regex.escape(t) for t in specials)
        self.pat = regex.compile(
            special_pat + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
            regex.IGNORECASE)
        self.vocab_size = len(self.encoder)
        self.sot_token_id = self.encoder[SOT_TEXT]
        self.eot_token_id = self.encoder[EOT_TEXT]

    def bpe(self, token):
        """Space-separated BPE symbols of one pre-token (memoised)."""
        cached = self.cache.get(token)
        if cached is not None:
            return cached
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        while len(word) > 1:
            pairs = set(zip(word[:-1], word[1:]))
            best = min(pairs, key=lambda p: self.bpe_ranks.get(p, float("inf")))
            if best not in self.bpe_ranks:
                break
            first, second = best
            merged = []
            i = 0
            # Merge every non-overlapping occurrence of the best pair, left to right.
            while i < len(word):
                if i < len(word) - 1 and word[i] == first and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
        result = " ".join(word)
        self.cache[token] = result
        return result

    def encode(self, text):
        text = whitespace_clean(basic_clean(text)).lower()
        ids = []
        for piece in self.pat.findall(text):
            piece = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[sym] for sym in self.bpe(piece).split(" "))
        return ids

    def decode(self, ids):
        text = "".join(self.decoder[int(i)] for i in ids)
        raw = bytearray(self.byte_decoder[c] for c in text)
        return raw.decode("utf-8", errors="replace").replace("</w>", " ")

    def token_lengths(self, texts):
        """Length of SOT + BPE ids + EOT of each text, before truncation."""
        if isinstance(texts, str):
            texts = [texts]
        return np.array([len(self.encode(t)) + 2 for t in texts], dtype=np.int64)

    def __call__(self, texts, context_length=77):
        """Ids of ``texts`` as an (N, context_length) int64 array.

        SOT + BPE + EOT, zero-padded; a longer sequence is cut to ``context_length``
        with its last id forced to EOT (open_clip's behaviour).
        """
        if isinstance(texts, str):
            texts = [texts]
        out = np.zeros((len(texts), context_length), dtype=np.int64)
        for row, text in enumerate(texts):
            ids = [self.sot_token_id] + self.encode(text) + [self.eot_token_id]
            if len(ids) > context_length:
                ids = ids[:context_length]
                ids[-1] = self.eot_token_id
            out[row, :len(ids)] = ids
        return out


@lru_cache()
def get_tokenizer():
    """Process-wide default tokenizer (building the vocab takes ~0.5 s)."""
    return SimpleTokenizer()


def tokenize(texts, context_length=77):
    """``open_clip.tokenize``: (N, context_length) int64 numpy array."""
    return get_tokenizer()(texts, context_length=context_length)
