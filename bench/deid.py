"""De-identification recall per PHI class on a SYNTHETIC corpus the rules were not written from, and false
positives on every ICD-10-CM description (``simple-icd-10-cm``): ``meddiag_pipelines.deid.rules`` beside
scrubadub (when importable) on the same texts.

The generator plants one identifier per sentence, drawn with Python's ``random`` from the formats listed in
``FORMATS`` below (written from the HIPAA identifier list and common EHR exports, not from the scrubber's
rules), in clinical sentences of its own (``CONTEXTS``), with Unicode dashes and spaces mixed in. Names are
built from syllables (``synthetic_name``), some with accents, so none comes from the scrubber's name lists.
A planted value counts as found when every non-space character of it lies inside a reported span, whatever
its kind (for privacy what matters is that it is gone). A second corpus (``bench/deid_grammar.py``, issue 24)
expands surface forms from a grammar (dates in words and ordinals, partial dates, names without titles,
lower-case names, ids with separators) and PHI-free lookalike sentences for the false-positive rate.
"""

from __future__ import annotations

import argparse
import calendar
import functools
import random
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import date, timedelta

from bench import emit, peak_rss_mb

NAME = "deid"
# icd: how many ICD-10-CM descriptions (None: all 97,729); scrubadub takes ~20 ms a text, so it gets a sample.
# grammar / clean: sentences per class of the grammar corpus (bench/deid_grammar.py) and PHI-free sentences.
SIZES = {
    "smoke": {"per_class": 20, "icd": 500, "icd_scrubadub": 200, "grammar": 20, "clean": 100},
    "default": {"per_class": 500, "icd": None, "icd_scrubadub": 5_000, "grammar": 500, "clean": 5_000},
}
SEED = 2026

# --- names from syllables (independent of meddiag_pipelines/deid/names.py) --------------------------------

_ONSETS = [
    "b",
    "br",
    "c",
    "ch",
    "d",
    "dr",
    "f",
    "g",
    "gr",
    "h",
    "j",
    "k",
    "l",
    "m",
    "n",
    "p",
    "r",
    "s",
    "sh",
    "st",
    "t",
    "tr",
    "v",
    "w",
    "z",
]
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ea", "ou", "é", "á", "í", "ó", "ü", "ñ" + "a", "ø"]
_CODAS = ["", "", "n", "r", "s", "l", "th", "nd", "rt", "z", "ck", "x"]


def synthetic_name(rng: random.Random, syllables: int | None = None) -> str:
    """A capitalised pseudo-name of 2-3 syllables; one in four may draw accented vowels (é, ü, ñ, ø, ...)."""
    n = syllables or rng.randint(2, 3)
    vowels = _VOWELS if rng.random() < 0.25 else _VOWELS[:8]
    word = "".join(rng.choice(_ONSETS) + rng.choice(vowels) + rng.choice(_CODAS) for _ in range(n))
    return word[0].upper() + word[1:]


# --- separators, with the Unicode variants real exports carry ---------------------------------------------

_DASHES = ["-", "-", "-", "\u2013", "\u2014", "\u2011", "\u2212"]
_SPACES = [" ", " ", " ", "\u00a0", "\u2009", "\u202f"]


def _dash(rng: random.Random) -> str:
    return rng.choice(_DASHES)


def _space(rng: random.Random) -> str:
    return rng.choice(_SPACES)


def _digits(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("0123456789") for _ in range(n))


def _case(rng: random.Random, word: str) -> str:
    return rng.choice([word, word.upper(), word.lower(), word.title()])


_MONTHS = list(calendar.month_name)[1:]  # English: Python leaves the C locale unless told


def _date(rng: random.Random) -> str:
    d = date(1920, 1, 1) + timedelta(days=rng.randrange(0, 38000))
    full, abbr = _MONTHS[d.month - 1], _MONTHS[d.month - 1][:3]
    mon = _case(rng, rng.choice([full, abbr]))
    sep = rng.choice(["/", "-", ".", " ", _dash(rng)])
    sp = _space(rng)
    return rng.choice(
        [
            f"{d.month:02d}/{d.day:02d}/{d.year}",
            f"{d.month}/{d.day}/{d.year % 100:02d}",
            f"{d.month}{sep}{d.day}{sep}{d.year}",
            f"{d.day:02d}.{d.month:02d}.{d.year}",
            d.isoformat(),
            f"{d.year}/{d.month}/{d.day}",
            f"{mon}{sp}{d.day},{sp}{d.year}",
            f"{mon}{sp}{d.day}{sp}{d.year}",
            f"{d.day}{sp}{mon}{sp}{d.year}",
            f"{d.day:02d}{sep}{mon}{sep}{d.year}",
            f"{d.day:02d}{mon.upper()}{d.year}",
            f"{d.day:02d}{sep}{mon}{sep}{d.year % 100:02d}",
            f"{mon}{sep}{d.day:02d}{sep}{d.year}",
            f"{mon}{sp}{d.year}",
            f"{mon}.{sp}{d.day}",
            f"{d.day}{sp}{mon}",
        ]
    )


def _phone(rng: random.Random) -> str:
    a, b, c, d = str(rng.randrange(201, 989)), str(rng.randrange(201, 999)), _digits(rng, 4), _dash(rng)
    ext = rng.choice(["", "", "", f" x{_digits(rng, 3)}", f" ext. {_digits(rng, 4)}"])
    cc = rng.choice(["44", "33", "49", "61", "91", "34", "39", "52"])
    intl = rng.choice(
        [
            f"+{cc} {_digits(rng, 2)} {_digits(rng, 4)} {_digits(rng, 4)}",
            f"+{cc}{d}{_digits(rng, 3)}{d}{_digits(rng, 3)}{d}{_digits(rng, 4)}",
            f"+{cc} (0){_digits(rng, 2)} {_digits(rng, 7)}",
            f"00{cc} {_digits(rng, 3)} {_digits(rng, 6)}",
        ]
    )
    us = rng.choice(
        [
            f"({a}) {b}{d}{c}",
            f"{a}{d}{b}{d}{c}",
            f"{a}.{b}.{c}",
            f"+1 {a} {b} {c}",
            f"1{d}{a}{d}{b}{d}{c}",
            f"+1 ({a}) {b}{d}{c}",
            f"({a}){b}{d}{c}",
        ]
    )
    return (intl if rng.random() < 0.3 else us) + ext


def _ssn(rng: random.Random) -> str:
    sep = rng.choice(["-", ".", " ", _dash(rng)])
    return f"{rng.randrange(100, 899)}{sep}{_digits(rng, 2)}{sep}{_digits(rng, 4)}"


def _record_id(rng: random.Random) -> str:
    return rng.choice(
        [
            _digits(rng, 7),
            _digits(rng, 8),
            "E" + _digits(rng, 7),
            f"{_digits(rng, 3)}-{_digits(rng, 4)}",
            "MR" + _digits(rng, 6),
            _digits(rng, 10),
        ]
    )


def _age(rng: random.Random) -> str:
    return str(rng.randrange(90, 112))


def _address(rng: random.Random) -> str:
    street = " ".join(synthetic_name(rng, 2) for _ in range(rng.randint(1, 2)))
    suffix = rng.choice(
        [
            "St",
            "St.",
            "Street",
            "Ave",
            "Avenue",
            "Rd",
            "Road",
            "Blvd",
            "Lane",
            "Ln",
            "Dr",
            "Drive",
            "Ct",
            "Way",
            "Hwy",
            "Place",
        ]
    )
    direction = rng.choice(["", "", "", "N ", "S. ", "East ", "W "])
    unit = rng.choice(
        ["", "", "", f", Apt {rng.randint(1, 40)}", f" Suite {rng.randint(100, 900)}", f" #{rng.randint(1, 30)}"]
    )
    if rng.random() < 0.15:
        return rng.choice([f"P.O. Box {rng.randint(10, 99999)}", f"PO Box {rng.randint(10, 9999)}"])
    return f"{rng.randint(1, 99999)} {direction}{street} {suffix}{unit}"


def _postal(rng: random.Random) -> str:
    letters = "ABCEGHJKLMNPRSTVXY"
    return rng.choice(
        [
            f"{rng.randrange(1000, 99999):05d}",
            f"{rng.randrange(1000, 99999):05d}-{_digits(rng, 4)}",
            f"{rng.choice(['SW', 'M', 'EH', 'B', 'LS'])}{rng.randint(1, 19)} {rng.randint(1, 9)}{rng.choice(letters)}{rng.choice(letters)}",
            f"{rng.choice(letters)}{rng.randint(0, 9)}{rng.choice(letters)} {rng.randint(0, 9)}{rng.choice(letters)}{rng.randint(0, 9)}",
        ]
    )


def _email(rng: random.Random) -> str:
    user = rng.choice(
        [synthetic_name(rng).lower(), f"{synthetic_name(rng, 1).lower()}.{synthetic_name(rng, 2).lower()}"]
    )
    user = user.encode("ascii", "ignore").decode() or "pt"
    return (
        f"{user}{rng.randrange(100)}@{rng.choice(['gmail.com', 'yahoo.co.uk', 'clinic-west.org', 'mail.example.net'])}"
    )


def _url(rng: random.Random) -> str:
    host = synthetic_name(rng).lower().encode("ascii", "ignore").decode() or "portal"
    return rng.choice(
        [
            f"https://{host}.org/chart/{_digits(rng, 6)}",
            f"www.{host}.com",
            f"http://{host}.net/p?id={_digits(rng, 5)}",
            f"{host}.com/{_digits(rng, 4)}",
        ]
    )


def _ip(rng: random.Random) -> str:
    if rng.random() < 0.25:
        return rng.choice(
            [
                f"fe80::{rng.randrange(65536):x}:{rng.randrange(65536):x}",
                ":".join(f"{rng.randrange(65536):x}" for _ in range(8)),
            ]
        )
    return ".".join(str(rng.randrange(1, 256)) for _ in range(4))


def _name(rng: random.Random) -> str:
    return rng.choice(
        [
            synthetic_name(rng),
            f"{synthetic_name(rng)} {synthetic_name(rng)}",
            f"{synthetic_name(rng)[0]}. {synthetic_name(rng)}",
        ]
    )


# The formats each class is drawn from (above) and the contexts it is planted in ("{}" is the value).
FORMATS: dict[str, Callable[[random.Random], str]] = {
    "DATE": _date,
    "PHONE": _phone,
    "SSN": _ssn,
    "MRN": _record_id,
    "ACCOUNT": _record_id,
    "AGE": _age,
    "NAME": _name,
    "ADDRESS": _address,
    "ZIP": _postal,
    "EMAIL": _email,
    "URL": _url,
    "IP": _ip,
    "NAME_BARE": _name,
}
CONTEXTS: dict[str, list[str]] = {
    "DATE": [
        "Echo on {} showed EF 40%.",
        "Admission date: {}",
        "DOB {} (per registration).",
        "Hip replaced {}, no complications.",
        "Seen {} for wound check.",
        "Next INR check {}.",
    ],
    "PHONE": [
        "Pt can be reached at {}.",
        "Home phone: {}",
        "Son's mobile {} (preferred).",
        "Tel {}",
        "Call back number {}",
    ],
    "SSN": ["SSN: {}", "Social security no. {} on face sheet.", "ssn {} verified.", "Patient SSN {}."],
    "MRN": [
        "MRN {}",
        "MR No. {} - transfer from OSH.",
        "chart: {}",
        "Medical record # {}",
        "Patient ID {} on wristband.",
        "ID# {}",
        "mrn: {}",
        "Hospital number {}.",
    ],
    "ACCOUNT": [
        "Acct {} self-pay.",
        "Account no. {}",
        "acct#{}",
        "Insurance member ID {}",
        "Policy # {}",
        "Claim number {}",
    ],
    "AGE": [
        "{} y.o. female with falls.",
        "{}yo M, nursing home resident.",
        "A {}-year-old man with sepsis.",
        "aged {}, lives with daughter",
        "Age: {}",
        "{} years old, DNR.",
        "{} y/o with delirium.",
        "{} yrs, hard of hearing.",
    ],
    "NAME": [
        "Seen by dr. {} today.",
        "DR. {} notified.",
        "Mrs {} at bedside.",
        "Discussed with nurse {}.",
        "Referred by {}, MD.",
        "Patient: {}",
        "Attending: Dr {}",
        "prof. {} consulted.",
        "Mr. {} declined the flu shot.",
        "Electronically signed by {}",
    ],
    "ADDRESS": ["Lives at {} with wife.", "Address: {}", "Home: {}, second floor.", "Discharged to {}."],
    "ZIP": [
        "Springfield, IL {}",
        "Zip code {}",
        "Mailing address: Salem, Oregon {}",
        "Postcode {} on file.",
        "postal code: {}",
    ],
    "EMAIL": ["E-mail: {}", "Send results to {} please.", "Daughter's email {}"],
    "URL": ["Uploaded to {}", "See {} for the handout.", "Portal link: {}"],
    "IP": ["Login from {} flagged.", "Device IP {}", "VPN address {} at 03:10."],
    # a name with no title, label or credential: only the bundled name lists could find it
    "NAME_BARE": [
        "{} presented with chest pain.",
        "Spoke with {} about the plan.",
        "{} tolerated the procedure.",
        "Family: {} visited.",
    ],
}


def synthetic_corpus(per_class: int, seed: int = SEED) -> list[tuple[str, str, int, int]]:
    """(text, class, start, end): ``per_class`` sentences per class, the planted value at text[start:end]."""
    rng = random.Random(seed)
    out = []
    for cls, draw in FORMATS.items():
        for _ in range(per_class):
            template = rng.choice(CONTEXTS[cls])
            value = draw(rng)
            i = template.index("{}")
            out.append((template[:i] + value + template[i + 2 :], cls, i, i + len(value)))
    return out


def found(spans: list[tuple[int, int]], text: str, start: int, end: int) -> bool:
    """Every non-space character of text[start:end] lies inside one of ``spans``."""
    return all(text[i].isspace() or any(s <= i < e for s, e in spans) for i in range(start, end))


@functools.cache
def _all_icd_descriptions() -> tuple[str, ...]:
    """Every ICD-10-CM description, sorted (read once: the package takes seconds to list them)."""
    import simple_icd_10_cm as icd

    return tuple(sorted({icd.get_description(code) for code in icd.get_all_codes()}))


def icd_descriptions(limit: int | None) -> list[str]:
    descriptions = list(_all_icd_descriptions())
    return descriptions if limit is None else random.Random(SEED).sample(descriptions, limit)


def ours() -> Callable[[str], list[tuple[int, int]]]:
    from meddiag_pipelines.deid.rules import find_phi

    return lambda text: [(s.start, s.end) for s in find_phi(text)]


def scrubadub_spans() -> Callable[[str], list[tuple[int, int]]] | None:
    """scrubadub with every detector that runs offline (its name detector needs NLTK data, its address and
    postal detectors other packages or locales), US locale; None when scrubadub is not importable."""
    try:
        import scrubadub
        import scrubadub.detectors
    except ImportError:
        return None
    scrubber = scrubadub.Scrubber(locale="en_US")
    scrubber.add_detector(scrubadub.detectors.DateOfBirthDetector)
    return lambda text: [(f.beg, f.end) for f in scrubber.iter_filth(text)]


def recall(
    spans_of: Callable[[str], list[tuple[int, int]]], corpus
) -> tuple[dict[str, int], dict[str, int], list[str]]:
    """Sentences and values found per class, and the sentences whose value was missed."""
    n: dict[str, int] = defaultdict(int)
    hit: dict[str, int] = defaultdict(int)
    missed = []
    for text, cls, s, e in corpus:
        n[cls] += 1
        ok = found(spans_of(text), text, s, e)
        hit[cls] += ok
        if not ok:
            missed.append(text)
    return n, hit, missed


def evaluate(impl: str, spans_of: Callable[[str], list[tuple[int, int]]], corpus, icd: list[str], size: str) -> dict:
    start = time.perf_counter()
    n, hit, _ = recall(spans_of, corpus)
    altered = [d for d in icd if spans_of(d)]
    seconds = time.perf_counter() - start
    return emit(
        {
            "name": NAME,
            "impl": impl,
            "size": size,
            "seconds": round(seconds, 2),
            "peak_rss_mb": round(peak_rss_mb(), 1),
            "recall": {c: round(hit[c] / n[c], 3) for c in n},
            "n_per_class": max(n.values()),
            "overall_recall": round(sum(hit.values()) / sum(n.values()), 3),
            "icd_descriptions": len(icd),
            "icd_altered": len(altered),
            "icd_altered_examples": altered[:5],
        }
    )


def evaluate_grammar(
    impl: str, spans_of: Callable[[str], list[tuple[int, int]]], conf: dict, seed: int, size: str
) -> dict:
    """Recall per class on the grammar corpus and the share of PHI-free sentences altered (bench/deid_grammar.py)."""
    from bench.deid_grammar import clean_sentences, grammar_corpus

    start = time.perf_counter()
    n, hit, missed = recall(spans_of, grammar_corpus(conf["grammar"], seed))
    clean = clean_sentences(conf["clean"], seed)
    altered = [t for t in clean if spans_of(t)]
    return emit(
        {
            "name": NAME,
            "impl": impl,
            "corpus": "grammar",
            "size": size,
            "seconds": round(time.perf_counter() - start, 2),
            "recall": {c: round(hit[c] / n[c], 3) for c in n},
            "n_per_class": max(n.values()),
            "missed_examples": missed[:: max(1, len(missed) // 12)][:12],
            "clean_sentences": len(clean),
            "clean_altered": len(altered),
            "clean_altered_rate": round(len(altered) / len(clean), 4),
            "clean_altered_examples": altered[:5],
        }
    )


def main(argv: list[str]) -> list[dict]:
    parser = argparse.ArgumentParser(prog="python -m bench deid")
    parser.add_argument("--size", default="default", choices=sorted(SIZES), help="smoke: 20 per class, 500 ICD texts")
    parser.add_argument("--seed", type=int, default=SEED, help="of the synthetic corpus")
    args = parser.parse_args(argv)
    conf = SIZES[args.size]
    corpus, icd = synthetic_corpus(conf["per_class"], args.seed), icd_descriptions(conf["icd"])
    results = [evaluate("meddiag", ours(), corpus, icd, args.size)]
    results.append(evaluate_grammar("meddiag", ours(), conf, args.seed, args.size))
    other = scrubadub_spans()
    if other is None:
        results.append(
            emit(
                {
                    "name": NAME,
                    "impl": "scrubadub",
                    "size": args.size,
                    "seconds": 0.0,
                    "peak_rss_mb": 0.0,
                    "skipped": "not installed",
                }
            )
        )
    else:
        results.append(
            evaluate("scrubadub", other, corpus, random.Random(SEED).sample(icd, conf["icd_scrubadub"]), args.size)
        )
    return results
