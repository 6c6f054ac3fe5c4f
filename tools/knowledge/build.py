#!/usr/bin/python3
"""Build m3's knowledge data (issue 6): facts from real tables, an honest seeded split, the
knowledge base, stage-2 training text, held-out text and question sets.

Sources (installed by scripts/get-knowledge.sh): Debian's miscfiles, iso-codes, kgeography-data,
calendar and dict-elements, and the npm tarballs world-countries-capitals@3.4.0 and
periodic-table@0.0.8 (read straight from data/knowledge-src/*.tgz). See knowledge/README.md.

Split (seeded, stratified by relation): trained ~60% (training text + knowledge base),
memory_only ~20% (knowledge base only), distractor ~20% (knowledge base only, never asked).
When the stage-1 corpus (data/corpus/*.jsonl) is present, a fact whose subject and answer occur
in one corpus document (tools/knowledge/common.py: whole-word, case-insensitive) cannot be
memory_only or distractor: it is moved to trained and a clean trained fact of the same relation
takes its place. Training documents are packed so that no memory_only/distractor fact has its
subject and answer in one training document either.

Usage:
    build.py [--src data/knowledge-src] [--corpus data/corpus] [--out knowledge] [--force]
    build.py --selftest          synthetic facts, no inputs needed; includes a planted leak
Output depends only on the inputs and these files (same inputs, same bytes). A re-run whose
input fingerprint matches knowledge/split.json only says so. Standard library only.
"""

import argparse
import glob
import gzip
import hashlib
import io
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ET

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import common  # noqa: E402
from common import fold_ascii, phrase_key  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(HERE))
SEED = 20240606
FRACTIONS = {"memory_only": 0.20, "distractor": 0.20}  # the rest: trained
MAX_ANSWER_CHARS = 24
MAX_ANSWER_WORDS = 3
MAX_SUBJECT_CHARS = 40
MAX_SUBJECT_WORDS = 6
TRAIN_RENDERINGS = (8, 12)   # renderings per trained fact, inclusive range
HELDOUT_RENDERINGS = 2       # one QA, one prose per memory_only fact
DOC_FACTS = (4, 8)           # renderings (of distinct facts) per training document
OPEN_DOCS = 12               # documents being filled at once by the packer

APT_PACKAGES = ["dict-elements", "calendar", "kgeography-data", "miscfiles", "iso-codes"]
NPM_TARBALLS = ["world-countries-capitals-3.4.0.tgz", "periodic-table-0.0.8.tgz"]

MISC = "/usr/share/misc"
ISO = "/usr/share/iso-codes/json"
KGEO = "/usr/share/kgeography"
CAL = "/usr/share/calendar"
ELEMENTS_DICT = "/usr/share/dictd/elements.dict.dz"

# ------------------------------------------------------------------------------------------------
# Relations: the question (QA prompt), the knowledge-base sentence, and prose for training text
# phrased differently from the kb sentence. {s} subject, {a} answer; {S} = subject with its first
# letter capitalized (sentence start). Every template puts a space before {a}.

RELATIONS = {
    "country_capital": dict(
        q="What is the capital of {s}?",
        kb="The capital of {s} is {a}.",
        prose=["{a} is the capital city of {s}.", "{S}'s capital: {a}.",
               "The government of {s} sits in {a}.", "If you travel to the capital of {s}, you arrive in {a}."]),
    "region_capital": dict(
        q="What is the capital of {s}?",
        kb="The capital of {s} is {a}.",
        prose=["{a} is the capital city of {s}.", "{S}'s capital: {a}.",
               "The administrative seat of {s} is the city of {a}.", "{S} is governed from {a}."]),
    "country_currency": dict(
        q="What is the currency of {s}?",
        kb="The currency of {s} is the {a}.",
        prose=["{S} pays with the {a}.", "Money in {s}: the {a}.",
               "Prices in {s} are given in the {a}.", "The official money of {s} is called the {a}."]),
    "country_continent": dict(
        q="On which continent is {s}?",
        kb="{S} is a country on the continent of {a}.",
        prose=["{S} lies in {a}.", "Continent of {s}: {a}.", "{S} is one of the countries of {a}."]),
    "country_code": dict(
        q="What is the three-letter country code of {s}?",
        kb="The three-letter country code of {s} is {a}.",
        prose=["{S} is abbreviated {a}.", "ISO 3166 alpha-3 code for {s}: {a}.",
               "The code {a} stands for {s}."]),
    "country_calling_code": dict(
        q="What is the telephone calling code of {s}?",
        kb="The telephone calling code of {s} is {a}.",
        prose=["To phone {s}, dial {a}.", "Calling code for {s}: {a}.",
               "Phone numbers in {s} start with {a} from abroad."]),
    "currency_code": dict(
        q="What is the ISO code of the currency {s}?",
        kb="The ISO currency code of the {s} is {a}.",
        prose=["The {s} is written {a} in currency tables.", "Currency code for the {s}: {a}.",
               "Banks abbreviate the {s} as {a}."]),
    "language_code": dict(
        q="What is the two-letter code of the {s} language?",
        kb="The two-letter language code of {s} is {a}.",
        prose=["{S} is tagged {a} in ISO 639-1.", "Language code for {s}: {a}.",
               "Texts in {s} are marked with the code {a}."]),
    "element_symbol": dict(
        q="What is the chemical symbol of {s}?",
        kb="The chemical symbol of {s} is {a}.",
        prose=["{S} is written {a} in chemical formulas.", "Symbol of {s}: {a}.",
               "Chemists abbreviate {s} as {a}."]),
    "element_number": dict(
        q="What is the atomic number of {s}?",
        kb="The atomic number of {s} is {a}.",
        prose=["{S} has {a} protons in its nucleus.", "Atomic number of {s}: {a}.",
               "In the periodic table, {s} is element number {a}."]),
    "element_discovery": dict(
        q="In what year was {s} discovered?",
        kb="The element {s} was discovered in {a}.",
        prose=["{S} was first identified in {a}.", "Year {s} was discovered: {a}.",
               "Chemists have known {s} since {a}."]),
    "airport_city": dict(
        q="Which city does the airport code {s} serve?",
        kb="The airport code {s} serves the city of {a}.",
        prose=["Flights to {s} land in {a}.", "Airport code {s}: {a}.",
               "Travellers bound for {s} arrive in {a}."]),
    "birth_year": dict(
        q="In what year was {s} born?",
        kb="{S} was born in {a}.",
        prose=["{S} (born {a}).", "Year of birth of {s}: {a}.", "The birth of {s} came in {a}."]),
    "death_year": dict(
        q="In what year did {s} die?",
        kb="{S} died in {a}.",
        prose=["{S} passed away in {a}.", "Year of death of {s}: {a}.", "The death of {s} came in {a}."]),
}


def cap1(s):
    return s[:1].upper() + s[1:]


def fill(t, f):
    return t.format(s=f["subject"], S=cap1(f["subject"]), a=f["answer"])


def question_prompt(f):
    return "Q: " + fill(RELATIONS[f["relation"]]["q"], f) + "\nA:"


def qa_text(f):
    return question_prompt(f) + " " + f["answer"] + "\n"


def kb_text(f):
    return fill(RELATIONS[f["relation"]]["kb"], f)


# ------------------------------------------------------------------------------------------------
# Reading the tables. Each reader yields raw (relation, subject, answer, source); clean_facts()
# folds, filters and deduplicates.


def read_gz_lines(path):
    with gzip.open(path, "rt", encoding="utf-8", errors="replace") as f:
        return f.read().splitlines()


def iso_countries():
    """alpha_2 -> (name, alpha_3) from iso-codes (common name preferred)."""
    with open(os.path.join(ISO, "iso_3166-1.json"), encoding="utf-8") as f:
        rows = json.load(f)["3166-1"]
    out = {}
    for r in rows:
        name = r.get("common_name") or r["name"]
        out[r["alpha_2"].upper()] = (name, r["alpha_3"])
    return out


def read_countries(src, npm):
    iso = iso_countries()
    for a2, (name, a3) in sorted(iso.items()):
        yield "country_code", name, a3, "iso-codes:iso_3166-1.json"
    for line in read_gz_lines(os.path.join(MISC, "countries.gz")):
        if line.startswith("#") or not line.strip():
            continue
        parts = line.split(":")
        if len(parts) != 5 or parts[1] not in iso:
            continue
        cap = parts[4].strip()
        if cap and "(" not in cap and "," not in cap:
            yield "country_capital", iso[parts[1]][0], cap, "miscfiles:countries"
    wcc = json.loads(npm["world-countries-capitals-3.4.0.tgz"]["package/data/data.json"])
    continents = {"af": "Africa", "as": "Asia", "eu": "Europe", "na": "North America",
                  "oc": "Oceania", "sa": "South America"}
    for r in wcc:
        a2 = r["iso"]["alpha_2"].upper()
        if a2 not in iso:
            continue
        name = iso[a2][0]
        src_tag = "npm:world-countries-capitals@3.4.0"
        cur = r.get("currency", "")
        if cur and "," not in cur:
            yield "country_currency", name, currency_case(cur), src_tag
        if r.get("continent") in continents:
            yield "country_continent", name, continents[r["continent"]], src_tag
        pc = r.get("phone_code", "")
        if re.fullmatch(r"\+\d{1,4}", pc or ""):
            yield "country_calling_code", name, pc, src_tag


_PROPER_CURRENCY_WORDS = {"cfa": "CFA", "cfp": "CFP"}


def currency_case(cur):
    """world-countries-capitals is all lower case: capitalize the words before the unit
    ("united states dollar" -> "United States dollar"); a one-word currency stays lower case."""
    words = cur.split()
    if len(words) == 1 or cur in ("pound sterling",):
        return cur
    out = []
    for i, w in enumerate(words):
        if w in _PROPER_CURRENCY_WORDS:
            out.append(_PROPER_CURRENCY_WORDS[w])
        elif i < len(words) - 1:
            out.append(w[:1].upper() + w[1:])
        else:
            out.append(w)
    return " ".join(out)


def read_iso_codes():
    with open(os.path.join(ISO, "iso_4217.json"), encoding="utf-8") as f:
        for r in json.load(f)["4217"]:
            name = r["name"]
            if r["alpha_3"].startswith("X") or re.search(r"[,;()]|\bFund|\bCode|\bUnit", name):
                continue  # gold, SDRs, testing codes, funds: not a country's money
            yield "currency_code", name, r["alpha_3"], "iso-codes:iso_4217.json"
    with open(os.path.join(ISO, "iso_639-2.json"), encoding="utf-8") as f:
        for r in json.load(f)["639-2"]:
            if "alpha_2" in r and not re.search(r"[,;()]", r["name"]):
                yield "language_code", r["name"], r["alpha_2"], "iso-codes:iso_639-2.json"


def read_kgeography():
    """Regions of the country/state maps (not the maps whose divisions are countries or
    continents). A name given different capitals on two maps is dropped in clean_facts()."""
    for path in sorted(glob.glob(os.path.join(KGEO, "*.kgm"))):
        root = ET.parse(path).getroot()
        kind = (root.findtext("divisionsName") or "").strip().lower()
        if kind in ("countries", "continents", "oceans and basins"):
            continue
        for d in root.findall("division"):
            if (d.findtext("ignore") or "no").strip() != "no":
                continue
            name, cap = (d.findtext("name") or "").strip(), (d.findtext("capital") or "").strip()
            if name and cap:
                yield "region_capital", name, cap, "kgeography-data:" + os.path.basename(path)


def read_airports():
    for line in read_gz_lines(os.path.join(MISC, "airport.gz")):
        if line.startswith("#") or not line.strip():
            continue
        parts = line.split(":")
        if len(parts) != 5 or not re.fullmatch(r"[A-Z]{3}", parts[0]):
            continue
        city = parts[4].strip()
        if not city or "|" in city:
            continue
        city = city.split(",")[0].strip()
        yield "airport_city", parts[0], city, "miscfiles:airport"


# calendar.freebsd lists the birthdays of individual FreeBSD developers (with e-mail addresses):
# personal data of private people, left out.
CALENDAR_EXCLUDE = {"calendar.freebsd"}
_CAL_LINE = re.compile(
    r"^(?P<name>[A-Z][^,;:]*?) (?:is )?(?P<ev>born|dies|died)(?: in [^0-9]*?)?, (?P<year>1\d{3}|20[0-2]\d)(?:$|[,;.\s])")


def read_calendar():
    for path in sorted(glob.glob(os.path.join(CAL, "calendar.*"))):
        if os.path.isdir(path) or os.path.basename(path) in CALENDAR_EXCLUDE:
            continue
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                m = re.match(r"^\d\d/\d\d\*?\t(.*)$", line.rstrip("\n"))
                if not m:
                    continue
                c = _CAL_LINE.match(m.group(1).strip())
                if not c:
                    continue
                name = re.sub(r"\s*\([^)]*\)", "", c.group("name")).replace('"', "").strip()
                if not name or re.search(r"[()\[\]<>@]", name):
                    continue
                rel = "birth_year" if c.group("ev") == "born" else "death_year"
                yield rel, name, c.group("year"), "calendar:" + os.path.basename(path)


def read_elements(npm):
    """Symbols and atomic numbers from dict-elements (cross-checked with periodic-table: both
    must agree), discovery years from periodic-table."""
    de = {}
    with gzip.open(ELEMENTS_DICT, "rt", encoding="utf-8", errors="replace") as f:
        text = f.read()
    for m in re.finditer(r"^([a-z]+)\nSymbol: ([A-Z][a-z]{0,2})\nAtomic number: (\d+)\n", text, re.M):
        de[m.group(1)] = (m.group(2), m.group(3))
    pt = json.loads(npm["periodic-table-0.0.8.tgz"]["package/data.json"])
    for r in pt:
        name = r["name"].strip().lower()
        sym, num = str(r["symbol"]).strip(), str(r["atomicNumber"])
        if de.get(name) == (sym, num):
            yield "element_symbol", name, sym, "dict-elements+npm:periodic-table@0.0.8"
            yield "element_number", name, num, "dict-elements+npm:periodic-table@0.0.8"
        year = str(r.get("yearDiscovered", "")).strip()
        if re.fullmatch(r"1\d{3}|20[0-2]\d", year):
            yield "element_discovery", name, year, "npm:periodic-table@0.0.8"


def load_npm(src):
    """{tarball: {member path: text}} for the json members we read."""
    out = {}
    for tb in NPM_TARBALLS:
        path = os.path.join(src, tb)
        members = {}
        with tarfile.open(path, "r:gz") as t:
            for m in t.getmembers():
                if m.isfile() and m.name in ("package/data/data.json", "package/data.json"):
                    members[m.name] = t.extractfile(m).read().decode("utf-8")
        out[tb] = members
    return out


def slug(s):
    return "-".join(common.runs(s)) or "x"


def clean_facts(raw):
    """Folds to ASCII, applies the length rules, drops trivial facts (answer inside the subject or
    the reverse), keeps one answer per (relation, subject) and one answer per question text.
    Returns (facts sorted by id, {reason: count} of the drops)."""
    drops = {}

    def drop(why):
        drops[why] = drops.get(why, 0) + 1

    by_key = {}
    for rel, subj, ans, src in raw:
        s, a = fold_ascii(subj), fold_ascii(ans)
        if s is None or a is None:
            drop("non-ASCII after folding")
            continue
        if len(a) > MAX_ANSWER_CHARS or len(a.split()) > MAX_ANSWER_WORDS:
            drop("answer too long")
            continue
        if len(s) > MAX_SUBJECT_CHARS or len(s.split()) > MAX_SUBJECT_WORDS:
            drop("subject too long")
            continue
        sk, ak = phrase_key(s), phrase_key(a)
        if not sk or not ak:
            drop("no letters or digits")
            continue
        if (" " + ak + " ") in (" " + sk + " ") or (" " + sk + " ") in (" " + ak + " "):
            drop("answer and subject overlap")
            continue
        key = (rel, sk)
        by_key.setdefault(key, []).append((s, a, src))
    facts = []
    for (rel, sk), cands in sorted(by_key.items()):
        answers = {phrase_key(a) for _, a, _ in cands}
        if len(answers) > 1:
            drop("ambiguous subject (several answers)")
            continue
        s, a, _ = sorted(cands)[0]
        srcs = sorted({c[2] for c in cands})
        facts.append({"relation": rel, "subject": s, "answer": a, "source": ";".join(srcs)})
    # One answer per question text (e.g. a region named like a country, with another capital).
    by_q = {}
    for f in facts:
        by_q.setdefault(phrase_key(RELATIONS[f["relation"]]["q"].format(s=f["subject"], S=f["subject"], a="")), []).append(f)
    keep = []
    for q, fs in sorted(by_q.items()):
        if len({phrase_key(f["answer"]) for f in fs}) > 1:
            drops["question asked with two answers"] = drops.get("question asked with two answers", 0) + len(fs)
            continue
        keep.append(sorted(fs, key=lambda f: (f["relation"], f["subject"]))[0])
        if len(fs) > 1:
            drops["duplicate question"] = drops.get("duplicate question", 0) + len(fs) - 1
    ids = {}
    for f in keep:
        base = f["relation"] + ":" + slug(f["subject"])
        n = ids.get(base, 0) + 1
        ids[base] = n
        f["id"] = base if n == 1 else "%s-%d" % (base, n)
    keep.sort(key=lambda f: f["id"])
    return [{"id": f["id"], "relation": f["relation"], "subject": f["subject"], "answer": f["answer"],
             "source": f["source"]} for f in keep], drops


# ------------------------------------------------------------------------------------------------
# The split


def split_facts(facts, corpus_hits, seed):
    """Assigns f["slice"]. corpus_hits: set of fact ids co-occurring in the corpus (these end in
    trained). Returns per-relation move statistics."""
    rng = random.Random(seed)
    stats = {}
    by_rel = {}
    for f in facts:
        by_rel.setdefault(f["relation"], []).append(f)
    for rel in sorted(by_rel):
        fs = sorted(by_rel[rel], key=lambda f: f["id"])
        rng.shuffle(fs)
        n = len(fs)
        n_mem = int(round(n * FRACTIONS["memory_only"]))
        n_dis = int(round(n * FRACTIONS["distractor"]))
        for i, f in enumerate(fs):
            f["slice"] = "memory_only" if i < n_mem else "distractor" if i < n_mem + n_dis else "trained"
        # Replacement pool: clean trained facts, taken from the end of the shuffled order.
        pool = [f for f in reversed(fs) if f["slice"] == "trained" and f["id"] not in corpus_hits]
        moved = replaced = 0
        for f in fs:
            if f["slice"] != "trained" and f["id"] in corpus_hits:
                old = f["slice"]
                f["slice"] = "trained"
                moved += 1
                if pool:
                    pool.pop(0)["slice"] = old
                    replaced += 1
        stats[rel] = {"moved_to_trained": moved, "replaced_by_clean_trained": replaced}
    return stats


# ------------------------------------------------------------------------------------------------
# Text


def renderings(f, k, rng):
    """k texts for fact f: about 40% the QA format, the rest prose templates in rotation."""
    prose = RELATIONS[f["relation"]]["prose"]
    n_qa = max(1, int(round(k * 0.4)))
    out = [qa_text(f)] * n_qa
    start = rng.randrange(len(prose))
    for i in range(k - n_qa):
        out.append(fill(prose[(start + i) % len(prose)], f) + "\n")
    return out


def pack_training(trained, protected, seed):
    """Training documents of DOC_FACTS renderings of distinct trained facts, so that no protected
    fact (memory_only / distractor) has subject and answer in one document. Returns (docs as
    lists of texts, statistics)."""
    rng = random.Random(seed + 1)
    scanner = common.LeakScanner([(f["id"], f["subject"], f["answer"]) for f in protected])
    items = []
    for f in trained:
        k = rng.randint(*TRAIN_RENDERINGS)
        for t in renderings(f, k, rng):
            items.append((f["id"], t))
    rng.shuffle(items)
    phr_cache = {}
    by_phrase = {}  # protected phrase -> [(fact id, other phrase)]
    for fid, sk, ak in ((f["id"], phrase_key(f["subject"]), phrase_key(f["answer"])) for f in protected):
        by_phrase.setdefault(sk, []).append(ak)
        by_phrase.setdefault(ak, []).append(sk)
    dropped_alone = 0
    docs_done = []
    open_docs = []  # [target, [texts], set(fact ids), set(phrases)]
    for fid, t in items:
        ph = phr_cache.get(t)
        if ph is None:
            ph = frozenset(scanner.matcher.match(t))
            phr_cache[t] = ph
        if scanner.leaks_in(t, set(ph)):
            dropped_alone += 1
            continue
        placed = False
        for d in open_docs:
            if fid in d[2]:
                continue
            new = ph - d[3]
            union = d[3] | ph
            if any(o in union for p in new for o in by_phrase.get(p, ())):
                continue
            d[1].append(t)
            d[2].add(fid)
            d[3] |= ph
            placed = True
            if len(d[1]) >= d[0]:
                docs_done.append(d[1])
                open_docs.remove(d)
            break
        if not placed:
            d = [rng.randint(*DOC_FACTS), [t], {fid}, set(ph)]
            if len(open_docs) >= OPEN_DOCS:
                docs_done.append(open_docs.pop(0)[1])
            open_docs.append(d)
    docs_done += [d[1] for d in open_docs]
    return docs_done, {"renderings": len(items) - dropped_alone, "renderings_dropped_self_leak": dropped_alone}


def pack_heldout(facts, seed):
    rng = random.Random(seed + 2)
    items = []
    for f in facts:
        r = renderings(f, 3, rng)  # QA + two prose; keep the QA and one prose
        items += [r[0], r[1 + rng.randrange(2)]][:HELDOUT_RENDERINGS]
    rng.shuffle(items)
    docs = []
    i = 0
    while i < len(items):
        k = rng.randint(*DOC_FACTS)
        docs.append(items[i:i + k])
        i += k
    return docs


def mc_rows(questions, facts, seed, slice_name):
    rng = random.Random(seed + 3)
    answers_by_rel = {}
    for f in facts:
        answers_by_rel.setdefault(f["relation"], {}).setdefault(phrase_key(f["answer"]), f["answer"])
    out = []
    for q in questions:
        pool = [a for k, a in sorted(answers_by_rel[q["relation"]].items()) if k != phrase_key(q["answer"])]
        if len(pool) < 3:
            continue
        choices = rng.sample(pool, 3) + [q["answer"]]
        rng.shuffle(choices)
        out.append({"id": "mc:" + slice_name + ":" + q["fact_id"], "fact_id": q["fact_id"],
                    "relation": q["relation"], "context": q["question"],
                    "choices": [" " + c for c in choices], "gold": choices.index(q["answer"])})
    return out


# ------------------------------------------------------------------------------------------------
# The whole build


def write_outputs(out, facts, seed, corpus_info, versions, fingerprint, drops, move_stats):
    os.makedirs(os.path.join(out, "questions"), exist_ok=True)
    os.makedirs(os.path.join(out, "mc"), exist_ok=True)
    sl = {s: [f for f in facts if f["slice"] == s] for s in ("trained", "memory_only", "distractor")}
    common.write_jsonl(os.path.join(out, "facts.jsonl"), facts)
    common.write_jsonl(os.path.join(out, "kb.jsonl"),
                       [{"id": f["id"], "text": kb_text(f), "title": f["subject"], "source": f["source"]}
                        for f in facts])
    protected = sl["memory_only"] + sl["distractor"]
    docs, pack_stats = pack_training(sl["trained"], protected, seed)
    common.write_jsonl(os.path.join(out, "train.jsonl"),
                       [{"id": "train:%05d" % i, "text": "".join(d)} for i, d in enumerate(docs)])
    hdocs = pack_heldout(sl["memory_only"], seed)
    common.write_jsonl(os.path.join(out, "heldout.jsonl"),
                       [{"id": "heldout:%05d" % i, "text": "".join(d)} for i, d in enumerate(hdocs)])
    for s in ("trained", "memory_only"):
        qs = [{"id": "q:" + f["id"], "fact_id": f["id"], "relation": f["relation"],
               "question": question_prompt(f), "answer": f["answer"]} for f in sl[s]]
        common.write_jsonl(os.path.join(out, "questions", s + ".jsonl"), qs)
        common.write_jsonl(os.path.join(out, "mc", s + ".jsonl"), mc_rows(qs, facts, seed, s))
    counts = {}
    for f in facts:
        c = counts.setdefault(f["relation"], {"trained": 0, "memory_only": 0, "distractor": 0, "total": 0})
        c[f["slice"]] += 1
        c["total"] += 1
    totals = {k: sum(c[k] for c in counts.values()) for k in ("trained", "memory_only", "distractor", "total")}
    split = {
        "seed": seed,
        "fractions": FRACTIONS,
        "counts": counts,
        "totals": totals,
        "corpus_check": corpus_info,
        "moves": move_stats,
        "dropped_facts": dict(sorted(drops.items())),
        "train": dict(pack_stats, documents=len(docs)),
        "heldout": {"documents": len(hdocs), "renderings": sum(len(d) for d in hdocs)},
        "sources": versions,
        "fingerprint": fingerprint,
    }
    with open(os.path.join(out, "split.json"), "w", encoding="utf-8", newline="\n") as f:
        json.dump(split, f, indent=1, sort_keys=True)
        f.write("\n")
    return split


def package_versions(src):
    out = {}
    for p in APT_PACKAGES:
        try:
            v = subprocess.run(["dpkg-query", "-W", "-f=${Version}", p], capture_output=True, text=True).stdout.strip()
        except OSError:
            v = ""
        out["apt:" + p] = v or "unknown"
    for tb in NPM_TARBALLS:
        h = hashlib.sha256(open(os.path.join(src, tb), "rb").read()).hexdigest()
        out["npm:" + tb] = "sha256:" + h
    return out


def source_fingerprint(src, corpus_files):
    h = hashlib.sha256()
    for p in (os.path.join(HERE, "build.py"), os.path.join(HERE, "common.py")):
        h.update(open(p, "rb").read())
    paths = [os.path.join(src, tb) for tb in NPM_TARBALLS]
    paths += [os.path.join(MISC, n) for n in ("countries.gz", "airport.gz")]
    paths += [os.path.join(ISO, n) for n in ("iso_3166-1.json", "iso_4217.json", "iso_639-2.json")] + [ELEMENTS_DICT]
    paths += sorted(glob.glob(os.path.join(KGEO, "*.kgm"))) + sorted(
        p for p in glob.glob(os.path.join(CAL, "calendar.*")) if os.path.isfile(p))
    for p in paths:
        h.update(p.encode() + b"\0")
        h.update(hashlib.sha256(open(p, "rb").read()).digest())
    for c in corpus_files:
        h.update(json.dumps(c, sort_keys=True).encode())
    return h.hexdigest()


def corpus_scan(facts, corpus_dir):
    """Co-occurrence of every fact in the corpus: (set of fact ids, info for split.json)."""
    if not corpus_dir or not os.path.isdir(corpus_dir) or not common.corpus_files(corpus_dir):
        return set(), {"checked": False, "reason": "no %s/*.jsonl at build time" % (corpus_dir or "corpus")}
    files = common.corpus_digest(corpus_dir)
    scanner = common.LeakScanner([(f["id"], f["subject"], f["answer"]) for f in facts])
    hits = {}
    ndocs = 0
    for p in common.corpus_files(corpus_dir):
        h, n = common.scan_documents(scanner, common.iter_jsonl_docs(p))
        ndocs += n
        for k, v in h.items():
            hits.setdefault(k, v)
    info = {"checked": True, "path": os.path.relpath(corpus_dir, ROOT) if corpus_dir.startswith(ROOT) else corpus_dir,
            "documents": ndocs, "files": files,
            "facts_cooccurring": len(hits)}
    return set(hits), info


def build(src, corpus_dir, out, force=False):
    t0 = time.time()
    missing = [os.path.join(src, tb) for tb in NPM_TARBALLS if not os.path.isfile(os.path.join(src, tb))]
    if missing:
        sys.exit("build.py: missing %s (run scripts/get-knowledge.sh)" % ", ".join(missing))
    cfiles = common.corpus_digest(corpus_dir) if corpus_dir and os.path.isdir(corpus_dir) else []
    fp = source_fingerprint(src, cfiles)
    split_path = os.path.join(out, "split.json")
    if not force and os.path.isfile(split_path):
        try:
            old = json.load(open(split_path))
        except ValueError:
            old = {}
        names = ["facts.jsonl", "kb.jsonl", "train.jsonl", "heldout.jsonl", "questions/trained.jsonl",
                 "questions/memory_only.jsonl", "mc/trained.jsonl", "mc/memory_only.jsonl"]
        if old.get("fingerprint") == fp and all(os.path.isfile(os.path.join(out, n)) for n in names):
            print("build.py: %s is up to date (fingerprint %s)" % (out, fp[:12]))
            return 0
    npm = load_npm(src)
    raw = []
    raw += list(read_countries(src, npm))
    raw += list(read_iso_codes())
    raw += list(read_kgeography())
    raw += list(read_airports())
    raw += list(read_calendar())
    raw += list(read_elements(npm))
    facts, drops = clean_facts(raw)
    t1 = time.time()
    hits, cinfo = corpus_scan(facts, corpus_dir)
    t2 = time.time()
    # Two facts on the same pair of phrases (airport LUX -> Luxembourg, country code of
    # Luxembourg -> LUX) cannot be split apart: training on one leaks the other. Both train.
    by_pair = {}
    for f in facts:
        by_pair.setdefault(frozenset((phrase_key(f["subject"]), phrase_key(f["answer"]))), []).append(f["id"])
    pair_forced = {i for ids in by_pair.values() if len(ids) > 1 for i in ids}
    cinfo["pair_collisions_forced_trained"] = sorted(pair_forced)
    move_stats = split_facts(facts, hits | pair_forced, SEED)
    if cinfo.get("checked"):
        # moved_to_trained counts the corpus co-occurrences and the pair collisions above.
        cinfo["moved_to_trained"] = sum(s["moved_to_trained"] for s in move_stats.values())
        cinfo["replaced_by_clean_trained"] = sum(s["replaced_by_clean_trained"] for s in move_stats.values())
    split = write_outputs(out, facts, SEED, cinfo, package_versions(src), fp, drops, move_stats)
    t3 = time.time()
    print("build.py: %d facts from %d raw rows (%.1f s); corpus check %s (%.1f s); outputs (%.1f s)" % (
        len(facts), len(raw), t1 - t0,
        ("%d documents, %d facts co-occur, %d moved to trained" % (cinfo["documents"], cinfo["facts_cooccurring"],
                                                                   cinfo["moved_to_trained"]))
        if cinfo.get("checked") else "SKIPPED (" + cinfo["reason"] + ")", t2 - t1, t3 - t2))
    print("%-22s %8s %8s %8s %8s" % ("relation", "trained", "mem_only", "distract", "total"))
    for rel, c in sorted(split["counts"].items()) + [("TOTAL", split["totals"])]:
        print("%-22s %8d %8d %8d %8d" % (rel, c["trained"], c["memory_only"], c["distractor"], c["total"]))
    return 0


# ------------------------------------------------------------------------------------------------
# Self-test: synthetic facts through the same split/packing/writing code, then check_leakage.py
# on the result, clean and with planted leaks.


def selftest():
    failures = []

    def check(cond, what):
        if not cond:
            failures.append(what)
            print("FAIL:", what)

    check(fold_ascii("Yaound\u00e9") == "Yaounde", "fold: accents")
    check(fold_ascii("Gda\u0144sk \u0141\u00f3d\u017a") == "Gdansk Lodz", "fold: Polish")
    check(fold_ascii("\u5317\u4eac") is None, "fold: CJK dropped")
    check(phrase_key("N'Djamena") == "n djamena", "phrase key")
    m = common.PhraseMatcher(["au", "gold", "n djamena", "new york"])
    check(m.match("In August, gold (Au) went to N'Djamena.") == {"au", "gold", "n djamena"}, "matcher whole words")
    check(m.match("New-York") == {"new york"} and m.match("York new") == set(), "matcher sequences")
    check(currency_case("west african cfa franc") == "West African CFA franc", "currency case")
    check(_CAL_LINE.match("Paul Revere born in Boston, 1735").group("year") == "1735", "calendar regex")
    check(_CAL_LINE.match("Alexander Hamilton born in Nevis, British West Indies, 1757?") is None,
          "calendar regex: uncertain year dropped")
    c = _CAL_LINE.match("Wilhelm Beer born, 1797, first astronomer to map Mars")
    check(c and c.group("name") == "Wilhelm Beer", "calendar regex: trailing note")

    # Synthetic facts: 3 relations x 60 subjects.
    raw = []
    for i in range(60):
        raw.append(("country_capital", "Landia%s" % chr(65 + i % 26) + str(i), "Capita%d" % i, "test"))
        raw.append(("element_symbol", "elementium%d" % i, "E%d" % i, "test"))
        raw.append(("birth_year", "Person Number%d" % i, str(1700 + i), "test"))
    raw.append(("country_capital", "Landia\u00c9", "Caf\u00e9ville", "test"))        # folded
    raw.append(("country_capital", "Dupe", "One", "test"))
    raw.append(("country_capital", "Dupe", "Two", "test"))                         # ambiguous: dropped
    raw.append(("country_capital", "Longa", "A very long capital name here", "test"))  # too long
    raw.append(("region_capital", "Guatemala", "Guatemala City", "test"))          # trivial
    facts, drops = clean_facts(raw)
    check(len(facts) == 181, "clean_facts count %d" % len(facts))
    check(drops.get("ambiguous subject (several answers)") == 1 and drops.get("answer too long") == 1
          and drops.get("answer and subject overlap") == 1, "clean_facts drops %r" % drops)
    tmp = tempfile.mkdtemp(prefix="m3-know-selftest-")
    try:
        corpus = os.path.join(tmp, "corpus")
        os.makedirs(corpus)
        # Corpus: elementium3 and E3 co-occur -> that fact must end in trained.
        common.write_jsonl(os.path.join(corpus, "c.jsonl"), [
            {"id": "c:1", "text": "Elementium3 has the symbol E3."},
            {"id": "c:2", "text": "Nothing to see here; E5 alone."}])
        hits, info = corpus_scan(facts, corpus)
        check(hits == {"element_symbol:elementium3"}, "corpus scan hits %r" % hits)
        outs = []
        for run in range(2):
            for f in facts:
                f.pop("slice", None)
            out = os.path.join(tmp, "k%d" % run)
            stats = split_facts(facts, hits, SEED)
            write_outputs(out, facts, SEED, info, {}, "test", drops, stats)
            outs.append(out)
        for name in ("facts.jsonl", "kb.jsonl", "train.jsonl", "heldout.jsonl", "split.json",
                     "questions/memory_only.jsonl", "mc/memory_only.jsonl"):
            check(open(os.path.join(outs[0], name), "rb").read() == open(os.path.join(outs[1], name), "rb").read(),
                  "deterministic " + name)
        fl = {f["id"]: f for f in common.read_jsonl(os.path.join(outs[0], "facts.jsonl"))}
        check(fl["element_symbol:elementium3"]["slice"] == "trained", "corpus co-occurrence forced to trained")
        n = {s: sum(1 for f in fl.values() if f["slice"] == s) for s in ("trained", "memory_only", "distractor")}
        check(n["memory_only"] == 36 and n["distractor"] == 36, "split sizes %r" % n)
        qs = common.read_jsonl(os.path.join(outs[0], "questions/memory_only.jsonl"))
        check(all(q["question"].startswith("Q: ") and q["question"].endswith("\nA:") for q in qs), "question format")
        kb = common.read_jsonl(os.path.join(outs[0], "kb.jsonl"))
        check(all((" " + fl[d["id"]]["answer"]) in d["text"] for d in kb), "kb answer preceded by space")
        tr = common.read_jsonl(os.path.join(outs[0], "train.jsonl"))
        check(all(4 <= len(d["text"].splitlines()) for d in tr[:-OPEN_DOCS]), "train docs hold several facts")
        # check_leakage on the clean output, then with planted leaks: must pass, then fail.
        cl = os.path.join(HERE, "check_leakage.py")
        ok = subprocess.run([sys.executable, cl, "--knowledge", outs[0], "--corpus", corpus],
                            capture_output=True, text=True)
        check(ok.returncode == 0, "check_leakage passes on a clean build:\n" + ok.stdout + ok.stderr)
        mem = next(f for f in fl.values() if f["slice"] == "memory_only")
        with open(os.path.join(outs[0], "train.jsonl"), "a") as f:
            f.write(json.dumps({"id": "train:planted", "text": "Trivia: %s ... %s." % (mem["subject"], mem["answer"])}) + "\n")
        bad = subprocess.run([sys.executable, cl, "--knowledge", outs[0], "--corpus", corpus],
                             capture_output=True, text=True)
        check(bad.returncode != 0 and mem["id"] in bad.stdout and "train:planted" in bad.stdout,
              "check_leakage fails on a planted training leak:\n" + bad.stdout + bad.stderr)
        dis = next(f for f in fl.values() if f["slice"] == "distractor")
        with open(os.path.join(corpus, "d.jsonl"), "w") as f:
            f.write(json.dumps({"id": "corpus:planted", "text": "%s, %s!" % (dis["answer"], dis["subject"].upper())}) + "\n")
        bad = subprocess.run([sys.executable, cl, "--knowledge", outs[1], "--corpus", corpus],
                             capture_output=True, text=True)
        check(bad.returncode != 0 and dis["id"] in bad.stdout and "corpus:planted" in bad.stdout,
              "check_leakage fails on a planted corpus leak:\n" + bad.stdout + bad.stderr)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if failures:
        print("build.py selftest: %d FAILED" % len(failures))
        return 1
    print("build.py selftest: all checks passed")
    return 0


def main(argv):
    if argv == ["--selftest"]:
        return selftest()
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--src", default=os.path.join(ROOT, "data", "knowledge-src"))
    ap.add_argument("--corpus", default=os.path.join(ROOT, "data", "corpus"))
    ap.add_argument("--out", default=os.path.join(ROOT, "knowledge"))
    ap.add_argument("--force", action="store_true", help="rebuild even when the fingerprint matches")
    a = ap.parse_args(argv)
    return build(os.path.abspath(a.src), os.path.abspath(a.corpus) if a.corpus else "", os.path.abspath(a.out), a.force)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
