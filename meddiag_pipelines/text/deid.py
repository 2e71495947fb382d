"""Rule-based PHI scrubbing in the style of Philter: regular expressions with context, typed placeholders.

Every identifier found is replaced by a typed placeholder (``PLACEHOLDERS``). The rules cover the HIPAA Safe
Harbor identifiers that a rule can find in free text:

========  ===========================================================================================
DATE      every date element other than a lone year: 03/14/2023, 3-14-23, 2023-03-14, 2023/3/14,
          March 14, 2023, Mar 14, 14 Mar 2023, 14th of March, March 2023, "on 3/14" (a month/day pair
          only after a date word: on, since, from, until, dated, DOB, admitted, discharged, ...)
PHONE     (555) 123-4567, 555-123-4567, 555.123.4567, +1 555 123 4567, 555-1234 after a phone word
FAX       the same shapes with "fax" shortly before
EMAIL     name@host.tld
SSN       123-45-6789, 123 45 6789, and any 9 digits after "SSN" / "social security"
MRN       the value after MRN / medical record number / med rec no / chart no / patient id / hospital no
ACCOUNT   the value after account / acct / billing / invoice / claim / member / policy / insurance /
          health plan / beneficiary (health-plan beneficiary numbers are reported as ACCOUNT)
LICENSE   the value after licence / license / lic / DEA / NPI / certificate / badge / serial
URL       http(s)://... and www....
IP        IPv4 dotted quads (each part 0-255) and full IPv6
ZIP       a 5- or 9-digit ZIP only after a US state (code or name) or "zip" / "postal code"; any
          12345-6789. A lone 5-digit number is never scrubbed, so lab values survive.
AGE       an age over 89: "92-year-old", "92 yo", "92 y/o", "age 95", "aged 91", "95 years of age"
          (the number is replaced: "[AGE]-year-old"); ages up to 89 are kept
NAME      after a title (Dr. Mr. Mrs. Ms. Miss Prof.), after a label (Patient:, Name:, seen by,
          signed by, attending, referred by, PCP, ...), before a credential (", MD", ", RN", ...),
          on signature lines ("/s/ ...", "Signed: ..."), and "Firstname Lastname" /
          "Lastname, Firstname" pairs from the bundled name lists (``names.py``)
========  ===========================================================================================

Not covered (no rule can find them reliably): geographic units smaller than a state other than the ZIP,
names with no context and not in the lists, vehicle and device identifiers without a label, biometric
identifiers, photographs, and years that reveal an age over 89. Clinical content is left alone: "5 mg",
"BP 120/80", "ICD-10 I21.4", "1/2 tablet", lone years and eponyms ("Parkinson disease") survive.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from meddiag_pipelines.text.names import FIRST_NAMES, SURNAMES

PLACEHOLDERS: dict[str, str] = {
    kind: f"[{kind}]"
    for kind in (
        "DATE",
        "PHONE",
        "FAX",
        "EMAIL",
        "SSN",
        "MRN",
        "ACCOUNT",
        "LICENSE",
        "URL",
        "IP",
        "ZIP",
        "AGE",
        "NAME",
    )
}


@dataclass(frozen=True, order=True)
class PhiSpan:
    start: int
    end: int
    kind: str


# --- building blocks --------------------------------------------------------------------------------------

_MONTH = (
    r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?|"
    r"Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)"
)
_MONTH_ANYCASE = f"(?i:{_MONTH})"
_MM = r"(?:0?[1-9]|1[0-2])"
_DD = r"(?:0?[1-9]|[12]\d|3[01])"
_YYYY = r"(?:1[89]\d\d|2[01]\d\d)"
_ORD = r"(?:st|nd|rd|th)?"
_SEP = r"[\s:#.\-]*"  # between a label and its value: "MRN: 123", "MRN #123", "MRN - 123"
_NUMBER_WORD = r"(?:number|no\.?|num\.?|nbr|#|id)"
_UNIT = r"(?i:mg|mcg|g|kg|ml|l|units?|tabs?|tablets?|caps?|capsules?|doses?|%|mmol|meq|mmhg|bpm|cm|mm)\b"

_US_STATES = (
    "AL AK AZ AR CA CO CT DE DC FL GA HI ID IL IN IA KS KY LA ME MD MA MI MN MS MO MT NE NV NH NJ NM NY NC "
    "ND OH OK OR PA RI SC SD TN TX UT VT VA WA WV WI WY PR GU VI AS MP"
).split()
_US_STATE_NAMES = (
    "Alabama|Alaska|Arizona|Arkansas|California|Colorado|Connecticut|Delaware|Florida|Georgia|Hawaii|Idaho|"
    "Illinois|Indiana|Iowa|Kansas|Kentucky|Louisiana|Maine|Maryland|Massachusetts|Michigan|Minnesota|"
    "Mississippi|Missouri|Montana|Nebraska|Nevada|New Hampshire|New Jersey|New Mexico|New York|"
    "North Carolina|North Dakota|Ohio|Oklahoma|Oregon|Pennsylvania|Rhode Island|South Carolina|South Dakota|"
    "Tennessee|Texas|Utah|Vermont|Virginia|Washington|West Virginia|Wisconsin|Wyoming|Puerto Rico"
)

# A capitalised name token ("Smith", "O'Brien", "McDonald", "Jean-Luc", "SMITH") or an initial ("J.").
_NAME_TOKEN = (
    r"(?:[A-Z][a-z]{0,3}[’']?[A-Z]?[a-z]{1,30}(?:-[A-Z][a-z]{1,30})?|[A-Z]{2,30}(?:[’'-][A-Z]{1,30})?|[A-Z]\.)"
    r"(?![A-Za-z])"
)
_NAME_SEQ = rf"{_NAME_TOKEN}(?:[ \t]+{_NAME_TOKEN}){{0,3}}"

# Capitalised words that follow a label but are not names ("Patient: Alert and oriented").
_NOT_NAMES = frozenset(
    """
    The A An He She They It This That These Those His Her Their Patient Pt Is Was Has Had Have Will With
    Without And Or But For Of In On At To From By As Not No Yes None Unknown Denies Reports Reported
    Presented Presents Complains Admitted Discharged Alert Stable History Today Yesterday Tomorrow Seen
    Follow Noted Status Chief Complaint Exam Assessment Plan Diagnosis Impression Male Female Man Woman
    Mr Mrs Ms Dr Miss Prof Doctor MD RN DO NP PA PhD Care Team Clinic Hospital Department Unit Service
    Emergency Cardiology Oncology Neurology Surgery Medicine Radiology Pathology Pediatrics Internal Family
    ED ER ICU OR PACU NICU Ward Room Bed Note Notes Signed Dictated Transcribed Electronically Name Date Time
    Age Sex DOB MRN Phone Fax Email Address Also Then Who Which Was Were Be Been Being Mg Ml
    Practitioner Manager Case Staff Station Anesthetist Physician Provider Surgeon Attending Resident Nurse
    Normal Saline Assistant Consult Consultation Services Health Center Medical Group Associates
    """.split()
)


@dataclass(frozen=True)
class _Rule:
    kind: str
    pattern: re.Pattern[str]
    group: str | int = 0  # the part of the match that is the identifier


def _r(kind: str, pattern: str, group: str | int = 0, flags: int = 0) -> _Rule:
    return _Rule(kind, re.compile(pattern, flags), group)


_RULES: list[_Rule] = [
    # ---- contact and network identifiers (least ambiguous first)
    _r("EMAIL", r"(?<![A-Za-z0-9._%+\-])[A-Za-z0-9._%+\-]{1,64}@[A-Za-z0-9.\-]{1,253}\.[A-Za-z]{2,24}\b"),
    _r("URL", r"(?i)\b(?:https?://|ftp://|www\.)[^\s<>\"'\])]+[^\s<>\"'\]).,;:!?]"),
    _r(
        "IP",
        r"(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?!\.?\d)",
    ),
    _r("IP", r"(?i)\b(?:[0-9a-f]{1,4}:){7}[0-9a-f]{1,4}\b"),
    _r("SSN", r"(?<![\d-])\d{3}([- ])\d{2}\1\d{4}(?![\d-])"),
    _r("SSN", rf"(?i)\b(?:SSN|SS#|social security(?: {_NUMBER_WORD})?){_SEP}(?:is\s+)?(?P<v>\d{{9}}|\d{{3}}[- ]?\d{{2}}[- ]?\d{{4}})\b", "v"),
    # ---- labelled record numbers: the value after the label
    _r(
        "MRN",
        rf"(?i)\b(?:MRN|MR#|medical record(?: {_NUMBER_WORD})?|med\.? ?rec(?:ord)?\.?(?: {_NUMBER_WORD})?|"
        rf"chart(?: {_NUMBER_WORD})|record {_NUMBER_WORD}|patient (?:id|identifier|{_NUMBER_WORD})|pt\.? id|"
        rf"hospital {_NUMBER_WORD}|unit {_NUMBER_WORD}|encounter {_NUMBER_WORD})(?![A-Za-z]){_SEP}(?:is\s+|of\s+)?"
        r"(?P<v>[A-Z]{0,4}-?\d[\dA-Z\-]{3,})\b",
        "v",
    ),
    _r(
        "ACCOUNT",
        rf"(?i)\b(?:account|acct\.?|a/c|billing|invoice|claim|member|subscriber|policy|insurance|"
        rf"health plan|beneficiary|medicaid|medicare)(?: {_NUMBER_WORD})?(?![A-Za-z]){_SEP}(?:is\s+)?"
        r"(?P<v>[A-Z]{0,4}-?\d[\dA-Z\-]{4,})\b",
        "v",
    ),
    _r(
        "LICENSE",
        rf"(?i)\b(?:licen[cs]e|lic\.?|DEA|NPI|certificate|cert\.?|badge|registration|serial|"
        rf"driver'?s licen[cs]e|DL)(?: {_NUMBER_WORD})?(?![A-Za-z]){_SEP}(?:is\s+)?"
        r"(?P<v>[A-Z]{0,4}-?\d[\dA-Z\-]{4,})\b",
        "v",
    ),
    # ---- phone and fax (the kind is decided by the words just before, see _phone_kind)
    _r("PHONE", r"(?<![\w.])(?:\+?1[\s.\-]?)?(?:\(\d{3}\)\s?|\d{3}[\s./\-])\d{3}[\s.\-]\d{4}(?:\s?(?:x|ext\.?)\s?\d{1,5})?\b"),
    _r("PHONE", r"(?i)\b(?:phone|tel|telephone|cell|mobile|pager|beeper|call(?:ed)?|fax|contact|reach(?:ed)? at)\b[\s:#.\-]*(?:number\s*|no\.?\s*|is\s+|at\s+)?(?P<v>\d{10}|\d{3}-\d{4})\b", "v"),
    # ---- dates
    _r("DATE", rf"(?<![\d/.\-]){_MM}([/\-.]){_DD}\1(?:{_YYYY}|\d{{2}})(?![\d/\-]|\.\d)"),
    _r("DATE", rf"(?<![\d/.\-]){_DD}([/\-.]){_MM}\1{_YYYY}(?![\d/\-]|\.\d)"),
    _r("DATE", rf"(?<![\d/.\-]){_YYYY}([/\-.]){_MM}\1{_DD}(?![\d/\-]|\.\d)"),
    _r("DATE", rf"\b{_YYYY}{_MM.replace('0?', '0')}{_DD.replace('0?', '0')}(?=T\d\d)"),
    _r("DATE", rf"\b{_MONTH}\.?[\s\-]+{_DD}{_ORD}\b(?:,?[\s\-]+{_YYYY}\b)?(?!\s*{_UNIT})"),
    _r("DATE", rf"\b{_DD}{_ORD}(?:\s+of)?[\s\-]+{_MONTH}\b\.?(?:,?[\s\-]+{_YYYY}\b)?"),
    _r("DATE", rf"\b{_MONTH_ANYCASE}\.?,?\s+{_YYYY}\b"),
    _r("DATE", rf"\b(?i:{_MONTH})\b(?=\s+(?:of\s+)?(?:this|last|next)\s+year)"),
    _r(
        "DATE",
        r"(?i)\b(?:on|since|from|until|till|through|thru|dated?|DOB|D\.O\.B\.|born|admitted|discharged|"
        r"seen|visit|before|after|starting|effective|collected|drawn|reported|signed)\b"
        rf"[\s:]+(?P<v>{_MM}/{_DD}(?![\d/]|\.\d)|{_YYYY}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\b)",
        "v",
    ),
    _r("DATE", rf"(?<![\d/]){_MM}/{_DD}(?=\s*(?:-|to|through|and)\s*{_MM}/{_DD}(?![\d/]))"),
    # ---- ZIP codes: only with an address context
    _r("ZIP", r"(?<![\d\-])\d{5}-\d{4}(?![\d\-])"),
    _r(
        "ZIP",
        rf"(?:\b(?:{'|'.join(_US_STATES)})\.?,?|\b(?:{_US_STATE_NAMES}),?|(?i:\bzip(?:\s*code)?|\bpostal\s*code)[\s:#]*)"
        r"\s+(?P<v>\d{5})(?![\d\-])",
        "v",
    ),
    # ---- ages over 89
    _r(
        "AGE",
        r"(?i)\b(?P<v>9\d|1[01]\d)(?=(?:\s*|-)(?:years?|yrs?|y)(?:\s*|-)(?:old|of age|o\b)|\s*y/o\b|\s*yo\b|"
        r"[\s\-]*(?:year|yr)s?\b)",
        "v",
    ),
    _r("AGE", r"(?i)\b(?:age[ds]?)\s*:?\s*(?:of\s+)?(?P<v>9\d|1[01]\d)\b(?!\s*(?:%|mg|kg|ml|mmhg|bpm|/))", "v"),
    _r("AGE", r"(?i)\b(?:nonagenarian|centenarian)\b"),
    # ---- names with context
    _r("NAME", rf"\b(?:Dr|Mr|Mrs|Ms|Mx|Miss|Prof|Doctor|Nurse)\b(?:\.[ \t]*|[ \t]+)(?P<v>{_NAME_SEQ})", "v"),
    _r(
        "NAME",
        r"(?i:\b(?:patient(?:'s)?\s+name|pt\.?\s+name|name|patient|pt|cc|RN|nurse|signature|signed))"
        rf"[ \t]*:[ \t]*(?P<v>{_NAME_SEQ})",
        "v",
    ),
    _r("NAME", rf"(?i:\bname)[ \t]*:[ \t]*(?P<v>{_NAME_TOKEN}(?:[ \t-]{_NAME_TOKEN})?,[ \t]*{_NAME_SEQ})", "v"),
    _r(
        "NAME",
        r"(?i:\b(?:seen\s+by|signed\s+by|electronically\s+signed\s+by|dictated\s+by|transcribed\s+by|"
        r"reviewed\s+by|examined\s+by|evaluated\s+by|referred\s+by|discussed\s+with|"
        r"referring\s+(?:physician|provider|doctor)|attending(?:\s+physician)?|physician|provider|surgeon|"
        r"PCP|primary\s+care(?:\s+physician)?|emergency\s+contact|next\s+of\s+kin|NOK|spouse|wife|husband|"
        r"daughter|son|mother|father|sister|brother|guardian))"
        rf"(?:[ \t]*[:\-,][ \t]*|[ \t]+)(?:is[ \t]+)?(?P<v>{_NAME_SEQ})",
        "v",
    ),
    _r(
        "NAME",
        rf"(?<![A-Za-z.’'-])(?P<v>{_NAME_TOKEN}(?:[ \t]+{_NAME_TOKEN}){{1,3}}),?[ \t]+"
        r"(?:MD|M\.D\.|DO|D\.O\.|RN|NP|PA-C|PA|PhD|DDS|DPM|FNP|CNM|CRNA|LPN|MBBS|FRCP|FACC|FACS)\b",
        "v",
    ),
    _r("NAME", rf"(?m)(?:^|\n)[ \t]*(?:/s/|--+|Signed:?|Signature:?|Sincerely,?)[ \t]*(?P<v>{_NAME_SEQ})", "v"),
]

_CAP_WORD = re.compile(r"\b[A-Z][a-z]+\b")
_REST_OF_NAME = re.compile(rf"(?:[ \t]+[A-Z]\.?)?[ \t]+(?P<last>{_NAME_TOKEN})")
_WORD_PAIR = re.compile(r"(?=\b([A-Za-z]+)[ \t]+([A-Za-z]+)\b)")
_LAST_FIRST = re.compile(r"\b(?P<last>[A-Z][a-z]+(?:'[A-Z][a-z]+)?),[ \t]*(?P<first>[A-Z][a-z]+)\b")


def _phone_kind(text: str, start: int) -> str:
    """FAX when "fax" comes shortly before the number in the same sentence, PHONE otherwise."""
    before = re.split(r"[.;\n]\s", text[max(0, start - 48) : start].lower())[-1]
    return "FAX" if "fax" in before or "facsimile" in before else "PHONE"


def _name_value(text: str, start: int, end: int) -> tuple[int, int] | None:
    """Trim a captured name sequence to its leading tokens that are not common capitalised words."""
    tokens = list(re.finditer(r"\S+", text[start:end]))
    kept_end = None
    for tok in tokens:
        word = tok.group().rstrip(".,'’")
        if word in _NOT_NAMES or (word.isupper() and len(word) > 1 and word.title() in _NOT_NAMES):
            break
        kept_end = start + tok.end()
    if kept_end is None:
        return None
    return start, kept_end


def _raw_spans(text: str) -> list[tuple[int, int, str, int]]:
    spans: list[tuple[int, int, str, int]] = []
    for priority, rule in enumerate(_RULES):
        for m in rule.pattern.finditer(text):
            start, end = m.span(rule.group)
            if start < 0 or start == end:
                continue
            kind = rule.kind
            if kind == "PHONE":
                kind = _phone_kind(text, m.start())
            elif kind == "NAME":
                trimmed = _name_value(text, start, end)
                if trimmed is None:
                    continue
                start, end = trimmed
            spans.append((start, end, kind, priority))
    prio = len(_RULES)
    for m in _CAP_WORD.finditer(text):
        if m.group() not in FIRST_NAMES:
            continue
        # "John Smith", "Mary J. Jones": a listed first name and a capitalised word that is not a common one.
        rest = _REST_OF_NAME.match(text, m.end())
        if rest is None:
            continue
        last = rest.group("last").rstrip(".")
        if last in _NOT_NAMES or (last.isupper() and len(last) > 1):
            continue
        spans.append((m.start(), rest.end(), "NAME", prio))
    for m in _WORD_PAIR.finditer(text):
        # "JOHN SMITH", "john smith": both words in the lists, in the same case.
        first, last = m.group(1), m.group(2)
        if (first.isupper() or first.islower()) and (last.isupper() == first.isupper()):
            if first.title() in FIRST_NAMES and last.title() in SURNAMES:
                spans.append((m.start(1), m.end(2), "NAME", prio))
    for m in _LAST_FIRST.finditer(text):
        if m.group("last") in SURNAMES and m.group("first") in FIRST_NAMES:
            spans.append((m.start(), m.end(), "NAME", prio))
    return spans


def find_phi(text: str) -> list[PhiSpan]:
    """Every identifier found in ``text``, as sorted, non-overlapping spans (overlaps are merged)."""
    if not text:
        return []
    raw = sorted(_raw_spans(text), key=lambda s: (s[0], -(s[1] - s[0]), s[3]))
    merged: list[list] = []
    for start, end, kind, _ in raw:
        if merged and start < merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
            continue
        merged.append([start, end, kind])
    return [PhiSpan(s, e, k) for s, e, k in merged]


def scrub(text: str) -> str:
    """``text`` with every identifier found replaced by its typed placeholder, e.g. ``[DATE]``."""
    if not text:
        return text
    out: list[str] = []
    pos = 0
    for span in find_phi(text):
        out.append(text[pos : span.start])
        out.append(PLACEHOLDERS[span.kind])
        pos = span.end
    out.append(text[pos:])
    return "".join(out)
