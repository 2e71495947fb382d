"""A second, independent corpus for ``python -m bench deid``: PHI surface forms expanded from a small grammar.

Written for issue 24 from how dates, names and numbers are written and dictated in notes, NOT from the
scrubber's rules, and run on the scrubber as it was before any rule was changed in response (the first
column of the grammar table in bench/README.md). The unit tests never draw from it: they have their own
corpora (``test_text_deid.py``, and ``bench/deid.py``'s ``synthetic_corpus``), so the rules are not tuned to
it by the test suite; seeded with ``random.Random``.

``GRAMMAR`` maps a non-terminal ``<x>`` to its alternatives; a word in ``<...>`` inside an alternative is
expanded again, first from ``GRAMMAR``, then from the sample's own values (``_Sample``: one date, one name,
one number per sentence, so "<d>" and "<ordw>" name the same day). Each class is one start symbol; its
contexts put the identifier (``{}``) in a clinical sentence. ``CLEAN`` expands PHI-free sentences full of
lookalikes (ordinals, "may", "march", dose counts, stages) for the false-positive rate.
"""

from __future__ import annotations

import random
import re
from datetime import date, timedelta

_ONES = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen".split()
_TENS = {2: "twenty", 3: "thirty"}
_ORD_ONES = "zeroth first second third fourth fifth sixth seventh eighth ninth tenth eleventh twelfth thirteenth fourteenth fifteenth sixteenth seventeenth eighteenth nineteenth".split()
_MONTHS = "January February March April May June July August September October November December".split()
_MONTH_ABBR = "Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec".split()
_WEEKDAYS = "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()
_WEEKDAY_ABBR = "Mon Tues Wed Thurs Fri Sat Sun".split()

# Given names and surnames written out for this corpus (common in US, UK, Hispanic, South and East Asian,
# African and Eastern European patients); the scrubber's own lists were not consulted.
_FIRST = """Olivia Liam Ava Noah Mia Ethan Chloe Lucas Aaliyah Mateo Ximena Santiago Valentina Diego Camila Arjun
Ananya Rohan Divya Kenji Haruto Sakura Minh Linh Jia Hao Chinedu Ngozi Kwame Amara Tomasz Agnieszka Dmitri
Olga Siobhan Declan Fiona Callum Graham Trevor Wendy Gail Doreen Clifford Mabel Ruth Irene Harvey Vernon
Lucille Bernadette Marisol Guadalupe Esperanza Rafael Ignacio Beatriz Yusuf Leila Omar Samira Tariq""".split()
_LAST = """Nguyen Patel Kowalski Okafor Hernandez Ramirez Castillo Mendoza Sato Tanaka Kim Park Chen Huang Singh
Sharma Iyer Mensah Adeyemi Novak Petrov Ivanova Murphy Gallagher Fitzgerald MacLeod Whitaker Pemberton Holloway
Ashworth Thornton Delgado Espinoza Villanueva Kaur Haddad Nasser Rahman Bianchi Rossi Moreau Lefebvre Schneider
Hoffmann Lindgren Johansson Abernethy Oduya Ferreira Carvalho Yilmaz Demir Kovacs Horvath Dubois Szabo""".split()
_STREETS = "Oak Maple Cedar Elm Willow Birch Lakeview Hillcrest Sunset Riverside Jefferson Lincoln Franklin Washington Park Church Mill Spring".split()
_SUFFIXES = (
    "Street St St. Avenue Ave Ave. Road Rd Boulevard Blvd Lane Ln Drive Dr Court Ct Way Place Terrace Circle".split()
)
_CITIES = [
    ("Springfield", "IL"),
    ("Columbus", "OH"),
    ("Portland", "OR"),
    ("Albany", "NY"),
    ("Austin", "TX"),
    ("Madison", "WI"),
    ("Fresno", "CA"),
]
_HOSTS = "mercyhealth.org stlukes.org valleyclinic.com gmail.com yahoo.com outlook.com hotmail.co.uk nhs.net".split()


def cardinal_words(n: int) -> str:
    return _ONES[n] if n < 20 else _TENS[n // 10] + ("" if n % 10 == 0 else "-" + _ONES[n % 10])


def ordinal_words(n: int) -> str:
    if n < 20:
        return _ORD_ONES[n]
    if n % 10 == 0:
        return _TENS[n // 10][:-1] + "ieth"
    return _TENS[n // 10] + "-" + _ORD_ONES[n % 10]


def ordinal_suffix(n: int) -> str:
    return "th" if 10 < n % 100 < 14 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")


def year_words(y: int) -> str:
    if 2000 <= y < 2010:
        return "two thousand" + ("" if y == 2000 else " " + _ONES[y % 10])
    hi, lo = divmod(y, 100)
    low = (
        "hundred" if lo == 0 else (f"oh {_ONES[lo]}" if lo < 10 else cardinal_words(lo) if lo < 40 else _tens_words(lo))
    )
    return f"{_tens_words(hi)} {low}"


def _tens_words(n: int) -> str:
    tens = {2: "twenty", 3: "thirty", 4: "forty", 5: "fifty", 6: "sixty", 7: "seventy", 8: "eighty", 9: "ninety"}
    return _ONES[n] if n < 20 else tens[n // 10] + ("" if n % 10 == 0 else "-" + _ONES[n % 10])


class _Sample:
    """The terminals of one sentence: one date, one person, one number, drawn once and reused."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.date = date(1925, 1, 1) + timedelta(days=rng.randrange(0, 36500))
        self.first, self.last, self.last2 = rng.choice(_FIRST), *rng.sample(_LAST, 2)
        self.city = rng.choice(_CITIES)
        self.case = rng.choice(["title", "title", "title", "upper", "lower"])  # of month and weekday words

    def _cased(self, word: str) -> str:
        return {"title": word, "upper": word.upper(), "lower": word.lower()}[self.case]

    def _digits(self, n: int) -> str:
        return "".join(self.rng.choice("0123456789") for _ in range(n))

    def value(self, key: str) -> str:
        d, rng = self.date, self.rng
        values = {
            "d": lambda: str(d.day),
            "dd": lambda: f"{d.day:02d}",
            "m": lambda: str(d.month),
            "mm": lambda: f"{d.month:02d}",
            "yyyy": lambda: str(d.year),
            "yy": lambda: f"{d.year % 100:02d}",
            "yearw": lambda: year_words(d.year),
            "ordn": lambda: f"{d.day}{ordinal_suffix(d.day)}",
            "ORDN": lambda: f"{d.day}{ordinal_suffix(d.day).upper()}",
            "ordw": lambda: ordinal_words(d.day),
            "ordw_sp": lambda: ordinal_words(d.day).replace("-", " "),
            "cardw": lambda: cardinal_words(d.day),
            "Month": lambda: self._cased(_MONTHS[d.month - 1]),
            "Mon": lambda: self._cased(_MONTH_ABBR[d.month - 1]),
            "Mon3": lambda: self._cased(_MONTHS[d.month - 1][:3]),
            "Weekday": lambda: self._cased(_WEEKDAYS[d.weekday()]),
            "Wkd": lambda: self._cased(_WEEKDAY_ABBR[d.weekday()]),
            "First": lambda: self.first,
            "Last": lambda: self.last,
            "Last2": lambda: self.last2,
            "I": lambda: rng.choice("ABCDEFGHJKLMNPRSTW"),
            "first": lambda: self.first.lower(),
            "last": lambda: self.last.lower(),
            "FIRST": lambda: self.first.upper(),
            "LAST": lambda: self.last.upper(),
            "D1": lambda: rng.choice("123456789"),
            "D2": lambda: self._digits(2),
            "D3": lambda: self._digits(3),
            "D4": lambda: self._digits(4),
            "D5": lambda: self._digits(5),
            "D6": lambda: self._digits(6),
            "D7": lambda: self._digits(7),
            "A": lambda: rng.choice("ABCDEFGHJKLMNPRSTUVWXYZ"),
            "area": lambda: str(rng.randrange(201, 990)),
            "exch": lambda: str(rng.randrange(201, 999)),
            "street": lambda: rng.choice(_STREETS),
            "suffix": lambda: rng.choice(_SUFFIXES),
            "city": lambda: self.city[0],
            "state": lambda: self.city[1],
            "host": lambda: rng.choice(_HOSTS),
            "num": lambda: str(rng.randrange(1, 9999)),
        }
        return values[key]()


# «...» marks the identifier inside an alternative when words around it are not PHI ("the «third of May»",
# "MRN «123 456 789»", a state); without marks the whole expansion is the identifier.
GRAMMAR: dict[str, list[str]] = {
    # ---- dates written in numbers
    "<DATE_NUMERIC>": [
        "<m>/<d>/<yyyy>",
        "<mm>/<dd>/<yyyy>",
        "<m>/<d>/<yy>",
        "<mm>-<dd>-<yyyy>",
        "<m>-<d>-<yy>",
        "<dd>.<mm>.<yyyy>",
        "<d>.<m>.<yy>",
        "<yyyy>-<mm>-<dd>",
        "<yyyy>/<mm>/<dd>",
        "<yyyy>.<mm>.<dd>",
        "<yyyy><mm><dd>",
        "«<mm>/<dd>/<yyyy>» <D1>:<D2>",
        "<dd>/<mm>/<yyyy>",
        "<mm> / <dd> / <yyyy>",
        "<m>/<d>/'<yy>",
    ],
    # ---- dates with the month or day in words, ordinals, weekdays
    "<DATE_WORDS>": [
        "the «<ordw> of <Month>»",
        "the «<ordw> of <Month> <yyyy>»",
        "the «<ordw> of <Month>, <yyyy>»",
        "<Month> the <ordn>",
        "<Month> the <ordw>",
        "<ordn> of <Month> <yyyy>",
        "<ordn> of <Month>",
        "<ordn> <Month>",
        "<ordn> <Month> <yyyy>",
        "<Month> <ordw>",
        "<Month> <ordw_sp>",
        "<Month> <ordw>, <yyyy>",
        "<ordw> of <Month>",
        "<Month> <cardw>",
        "<Month> <ordn>",
        "<Month> <ORDN>",
        "<Mon>. <ordn>",
        "<Mon>. <d>",
        "<Mon> <d>, <yyyy>",
        "<Mon>. <d>, <yyyy>",
        "<Weekday>, <Month> <d>",
        "<Weekday>, <Month> <ordn>",
        "<Weekday> the <ordw>",
        "<Weekday> the <ordn>",
        "<Wkd>, <Mon3> <d>",
        "<Wkd>. <d> <Month> <yyyy>",
        "<Weekday> <m>/<d>",
        "<Month> <ordw>, <yearw>",
        "the «<ordw> of <Month>, <yearw>»",
        "<d> <Month> <yyyy>",
        "<Mon3>-<dd>-<yyyy>",
        "<dd>-<Mon3>-<yy>",
    ],
    # ---- partial dates: month and year, day and month
    "<DATE_PARTIAL>": [
        "<Month> <yyyy>",
        "<Month> of <yyyy>",
        "<Month>, <yyyy>",
        "mid-«<Month> <yyyy>»",
        "early «<Month> <yyyy>»",
        "late «<Month> <yyyy>»",
        "mid «<Month> <yyyy>»",
        "<Mon>. <yyyy>",
        "<Mon3> '<yy>",
        "<Mon3>-<yy>",
        "<mm>/<yyyy>",
        "<m>/<yyyy>",
        "<mm>-<yyyy>",
        "<yyyy>-<mm>",
        "<d> <Month>",
        "<Month> <d>",
        "<d> <Mon>",
        "<Mon3> <d>",
        "on «<m>/<d>»",
        "since «<m>/<d>»",
        "«<Month>» of last year",
        "<Month> <yearw>",
    ],
    # ---- names with no title, label or credential; lower-case names with and without one
    "<NAME_NO_TITLE>": [
        "<First> <Last>",
        "<First> <I>. <Last>",
        "<Last>, <First>",
        "<I>. <Last>",
        "<FIRST> <LAST>",
        "<First>",
        "<First> <Last>-<Last2>",
        "<LAST>, <FIRST>",
    ],
    "<NAME_LOWER>": [
        "<first> <last>",
        "dr. «<last>»",
        "dr «<last>»",
        "mrs. «<last>»",
        "mr «<first> <last>»",
        "<last>, <first>",
        "nurse «<first>»",
        "dr. «<first> <last>»",
    ],
    # ---- identifiers with separators and spaces
    "<ID>": [
        "MRN «<D3> <D3> <D3>»",
        "MRN: «<D3>-<D3>-<D3>»",
        "MRN#«<D2>-<D2>-<D2>-<D2>»",
        "<D3>-<D2>-<D4>",
        "SSN «<D3> <D2> <D4>»",
        "ID «<A><D2>-<D3>-<D3>»",
        "Acct # «<D4> <D4> <D2>»",
        "med rec no. «<D3>.<D3>.<D3>»",
        "Pt ID: «<A><A> <D3> <D3>»",
        "Insurance ID «<A><A><A> <D3><D6>»",
        "Member #: «<A><D3> <D3> <D3>»",
        "chart no. «<D1> <D3> <D3>»",
        "<A><D2>-<D3>-<D3>",
        "MR# «<D7>»",
        "Encounter «<D4>-<D6>»",
        "Medicaid ID «<A><A><D5><A>»",
    ],
    "<PHONE>": [
        "(<area>) <exch> <D4>",
        "<area> <exch> <D4>",
        "<area>.<exch>.<D4>",
        "<area>-<exch>-<D4> x <D3>",
        "+1 <area> <exch> <D4>",
        "1 (<area>) <exch>-<D4>",
        "<area>/<exch>-<D4>",
        "<area>-<exch>-<D4> ext <D2>",
        "+44 (0)20 <D4> <D4>",
        "+33 <D1> <D2> <D2> <D2> <D2>",
        "<area> <exch><D4>",
        "(<area>)-<exch>-<D4>",
        "<area>-<exch>-<D4>",
    ],
    "<EMAIL>": [
        "<first>.<last>@<host>",
        "<first><last><D2>@<host>",
        "<First>.<Last>@<host>",
        "<first>_<last>+notes@<host>",
        "<I><last>@<host>",
    ],
    "<URL>": [
        "https://portal.<host>/patient/<D6>",
        "www.<host>",
        "http://<host>/chart?id=<D5>",
        "<host>/p/<D4>",
        "https://<host>/u/<first><last>",
    ],
    "<ADDRESS>": [
        "<num> <street> <suffix>",
        "<num> N. <street> <suffix>, Apt <D2>",
        "«<num> <street> <suffix>, <city>», <state>",
        "P.O. Box <D4>",
        "<num> <street> <suffix> #<D1>",
        "<num> <street> <suffix> Unit <D2>",
    ],
}

CONTEXTS: dict[str, list[str]] = {
    "DATE_NUMERIC": [
        "Seen {} for follow-up.",
        "DOB: {}",
        "Last colonoscopy {} was normal.",
        "Admitted {} with CAP.",
        "Date of injury {}.",
    ],
    "DATE_WORDS": [
        "Fell at home on {} and hit her head.",
        "Symptoms began {}.",
        "Next appointment is {} at 10 am.",
        "She was born {}.",
        "Last seen {}, stable.",
        "Surgery scheduled for {}.",
    ],
    "DATE_PARTIAL": [
        "Quit smoking {}.",
        "Hip replacement {}, no complications.",
        "Last mammogram {} was BIRADS 1.",
        "Started insulin {}.",
        "Diagnosed {} by her PCP.",
    ],
    "NAME_NO_TITLE": [
        "{} presented with chest pain.",
        "Spoke with {} about the plan.",
        "Per {}, the patient fell twice.",
        "{} (daughter) at bedside.",
        "Called {} to discuss results.",
        "Husband {} agrees with hospice.",
    ],
    "NAME_LOWER": [
        "seen by {} today.",
        "pt is {}, 64 yo.",
        "discussed with {} at bedside.",
        "{} called back.",
        "spoke to {} re: meds.",
    ],
    "ID": ["{} on the face sheet.", "Registration: {}.", "Verified {} with the patient.", "{}"],
    "PHONE": [
        "Call back at {}.",
        "Daughter's cell {}.",
        "Contact: {}",
        "Pharmacy phone {} confirmed.",
        "Reach him at {} after 5.",
    ],
    "EMAIL": ["Email {} with results.", "Contact: {}", "Daughter ({}) wants updates."],
    "URL": ["Records at {}.", "Handout: {}", "Uploaded to {} today."],
    "ADDRESS": ["Lives at {} with her son.", "Address: {}.", "Discharged home to {}."],
}

# PHI-free sentences with words and numbers that look like the forms above (false positives are counted).
CLEAN: dict[str, list[str]] = {
    "<S>": [
        "<ordw_c> episode of chest pain, <cardw_c> days ago.",
        "Second-degree AV block, Mobitz type <roman>.",
        "The <ordn_c> dose of the series is due in <cardw_c> weeks.",
        "She may <verb> <cardw_c> tablets at night.",
        "March in place for <cardw_c> minutes; may repeat.",
        "<ordw_c> trimester ultrasound normal.",
        "Sept. defect repaired; septal wall motion normal.",
        "Stage <roman> pressure ulcer of the sacral region.",
        "Take <cardw_c> mg by mouth every <cardw_c> hours.",
        "Pain <num_c>/10, improved from <num_c>/10.",
        "The <ordw_c> of <cardw_c> children; lives with family.",
        "Mid-morning glucose <num_c> mg/dL.",
        "Seen Monday in clinic; Friday labs pending.",
        "<cardw_c> of <cardw_c> lymph nodes positive.",
        "Follow up in the new year; early spring booster.",
        "First of two doses given; second due in <cardw_c> weeks.",
        "Gravida <num_c> para <num_c>, <ordw_c> pregnancy.",
        "Grade <num_c> of <num_c> systolic murmur at the apex.",
        "BP <num_c>/<num_c>, HR <num_c>, RR <num_c>.",
        "Dec. breath sounds at the bases; Jan. flu shot declined.",
        "Marked improvement over the <ordw_c> week.",
        "The <ordn_c> and <ordn_c> fingers are swollen.",
    ],
    "<verb>": ["take", "need", "use", "require"],
    "<roman>": ["I", "II", "III", "IV"],
}


def _expand(symbol: str, sample: _Sample, grammar: dict[str, list[str]]) -> str:
    def sub(m: re.Match[str]) -> str:
        key = m.group(0)
        if key in grammar:
            return _expand(key, sample, grammar)
        name = key[1:-1]
        if name.endswith("_c"):  # a free number for the clean sentences, not the sample's date
            n = sample.rng.randrange(1, 31)
            return {
                "ordw_c": ordinal_words(n),
                "cardw_c": cardinal_words(n),
                "ordn_c": f"{n}{ordinal_suffix(n)}",
                "num_c": str(n),
            }[name]
        return sample.value(name)

    return re.sub(r"<[A-Za-z0-9_]+>", sub, sample.rng.choice(grammar[symbol]))


def grammar_corpus(per_class: int, seed: int) -> list[tuple[str, str, int, int]]:
    """(text, class, start, end): ``per_class`` sentences per class, the planted value at text[start:end]."""
    rng = random.Random(seed)
    out = []
    for cls, contexts in CONTEXTS.items():
        for _ in range(per_class):
            value = _expand(f"<{cls}>", _Sample(rng), GRAMMAR)
            template = rng.choice(contexts)
            text = template.replace("{}", value)
            if "«" not in text:
                text = template.replace("{}", f"«{value}»")
            start, end = text.index("«"), text.index("»") - 1
            out.append((text.replace("«", "").replace("»", ""), cls, start, end))
    return out


def clean_sentences(n: int, seed: int) -> list[str]:
    """``n`` PHI-free clinical sentences with date- and name-like words (ordinals, "may", "march", stages)."""
    rng = random.Random(seed)
    return [_expand("<S>", _Sample(rng), CLEAN) for _ in range(n)]
