"""Shared text helpers for m3's knowledge data: ASCII folding, whole-word phrase matching, and the
co-occurrence leak scan used by build.py (the split) and check_leakage.py (the test).

"Whole word, case-insensitive": text is folded to ASCII, lower-cased and cut into runs of
[a-z0-9]; a phrase occurs in a text when its run sequence occurs there contiguously. So
"N'Djamena" is the runs ("n", "djamena") and matches "N'Djamena", "n djamena" and "N-Djamena",
but not "Ndjamena"; "Au" does not match inside "August". Punctuation is ignored ("+93" is "93"),
which makes the scan stricter (more co-occurrences found), never looser.

Standard library only.
"""

import glob
import hashlib
import json
import os
import re
import unicodedata

_TRANSLIT = {
    "\u00df": "ss", "\u00e6": "ae", "\u00c6": "AE", "\u00f8": "o", "\u00d8": "O", "\u0111": "d",
    "\u0110": "D", "\u0142": "l", "\u0141": "L", "\u0131": "i", "\u0153": "oe", "\u0152": "OE",
    "\u00fe": "th", "\u00de": "Th", "\u00f0": "d", "\u00d0": "D", "\u2019": "'", "\u2018": "'",
    "\u02bc": "'", "\u02bb": "'", "\u2013": "-", "\u2014": "-", "\u00a0": " ",
}
_TRANSLIT_TABLE = {ord(k): v for k, v in _TRANSLIT.items()}
_RUN = re.compile(r"[a-z0-9]+")


def fold_ascii(s):
    """Common accents and ligatures to ASCII ("Yaound\u00e9" -> "Yaounde"), spaces collapsed.
    Returns None when anything outside printable ASCII remains."""
    s = unicodedata.normalize("NFKD", s.translate(_TRANSLIT_TABLE))
    s = "".join(c for c in s if not unicodedata.combining(c))
    s = " ".join(s.split())
    if not s or any(not (32 <= ord(c) < 127) for c in s):
        return None
    return s


def fold_fast(text):
    """Lower-cased ASCII for matching: accents dropped, anything else non-ASCII becomes a break."""
    text = text.lower()
    if text.isascii():
        return text
    text = unicodedata.normalize("NFKD", text.translate(_TRANSLIT_TABLE))
    return text.encode("ascii", "ignore").decode("ascii")


def runs(text):
    """The [a-z0-9] runs of the folded text (see module doc)."""
    return _RUN.findall(fold_fast(text))


def phrase_key(text):
    """A phrase as its run sequence joined by single spaces ("" when it has none)."""
    return " ".join(runs(text))


class PhraseMatcher:
    """Finds which of a fixed set of phrases (phrase_key strings) occur in a text."""

    def __init__(self, keys):
        self.single = set()
        self.multi = {}  # first run -> [(key, runs)]
        for k in set(keys):
            if not k:
                continue
            parts = k.split(" ")
            if len(parts) == 1:
                self.single.add(k)
            else:
                self.multi.setdefault(parts[0], []).append((k, parts))

    def match(self, text):
        toks = runs(text)
        if not toks:
            return set()
        tokset = set(toks)
        found = self.single & tokset
        firsts = tokset.intersection(self.multi) if self.multi else ()
        if firsts:
            joined = None
            for t in firsts:
                for k, parts in self.multi[t]:
                    if all(p in tokset for p in parts[1:]):
                        if joined is None:
                            joined = " " + " ".join(toks) + " "
                        if " " + k + " " in joined:
                            found.add(k)
        return found


class LeakScanner:
    """Facts (id, subject, answer); reports the documents where a fact's subject and answer both
    occur (whole-word, case-insensitive)."""

    def __init__(self, facts):
        self.by_answer = {}
        self.subj = {}
        keys = []
        for fid, subject, answer in facts:
            sk, ak = phrase_key(subject), phrase_key(answer)
            if not sk or not ak:
                raise ValueError("fact %s: subject or answer has no letters or digits" % fid)
            self.by_answer.setdefault(ak, []).append((fid, sk))
            keys += [sk, ak]
        self.matcher = PhraseMatcher(keys)

    def leaks_in(self, text, found=None):
        """Fact ids whose subject and answer both occur in text."""
        if found is None:
            found = self.matcher.match(text)
        out = []
        for ak in found:
            for fid, sk in self.by_answer.get(ak, ()):
                if sk in found:
                    out.append(fid)
        return out


def corpus_files(corpus_dir):
    return sorted(glob.glob(os.path.join(corpus_dir, "*.jsonl")))


def corpus_digest(corpus_dir):
    """{files: [{name, bytes, sha256}], documents: None} of the corpus folder's *.jsonl."""
    files = []
    for p in corpus_files(corpus_dir):
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        files.append({"name": os.path.basename(p), "bytes": os.path.getsize(p), "sha256": h.hexdigest()})
    return files


def iter_jsonl_docs(path):
    """(doc id, text) of each line of a JSONL file with "text" (and usually "id")."""
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            o = json.loads(line)
            yield str(o.get("id", "%s:%d" % (os.path.basename(path), n))), o["text"]


def scan_documents(scanner, docs, first_only=True):
    """{fact id: [doc ids]} of the co-occurrences in docs ((id, text) pairs); with first_only, the
    first document per fact only. Returns (hits, number of documents read)."""
    hits = {}
    n = 0
    for did, text in docs:
        n += 1
        for fid in scanner.leaks_in(text):
            lst = hits.setdefault(fid, [])
            if not first_only or not lst:
                lst.append(did)
    return hits, n


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=True) + "\n")


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
