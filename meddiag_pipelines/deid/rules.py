"""Rule-based PHI scrubbing in the style of Philter: regular expressions with context, typed placeholders.

The text is first normalised for matching (``_normalise``: NFKC, every Unicode dash to "-", every Unicode
space to " ", zero-width characters dropped); spans found there are mapped back, so only the identifiers of
the original text are replaced and everything else is left byte for byte. Every identifier found is replaced
by a typed placeholder (``PLACEHOLDERS``). The rules cover the HIPAA Safe Harbor identifiers that a rule can
find in free text, each class in its common variants:

========  ===========================================================================================
DATE      every date element other than a lone year: numeric 03/14/2023, 3-14-23, 3/14/'23, 03 / 14 /
          2023, 14.03.2023, 2023-03-14, 20230314, 03/2023, 2023-03; a month name or abbreviation in any
          case, in any order, with / - . or spaces or nothing between: March 14, 2023, MARCH 14 2023,
          14 Mar 2023, 17/Apr/2023, 14-MAR-31, 14MAR1931, March 2023, June of 1940, Dec '13, Dec-96,
          Mar 14; days as ordinals or words and years in words: the third of May, 3rd of May 2021, May
          the 3rd, March twenty-first, March twenty-one, twenty-first March, Sept. 3rd, May third,
          nineteen sixty-one; a weekday with its date (Tues., Sept. 3rd; Friday the 13th; Fri 5/3).
          A lower-case "may" is the verb unless a year, "of" or a day in digits goes with it ("may
          3rd"); "on 3/14" (a month/day pair only after a date word, and not x/10 or x/5 after "pain",
          "strength", "score" and the like: a score)
PHONE     US numbers with (), dots, dashes or spaces, +1 or 1-, an extension (x12, ext. 12,
          extension 12); international numbers with + or 00 and a country code (8 to 15 digits);
          555-1234, 10 bare digits or 617 5550123 after a phone word
FAX       the same shapes with "fax" shortly before
EMAIL     name@host.tld
SSN       three, two and four digits with any one separator (- . space), and 9 digits after "SSN"
MRN       the value after MRN, MR#, MR No., medical record (number), med rec, chart (no.), record no.,
          patient id, ID#, ID:, hospital / unit no., encounter, with ':', '#', 'No.', dashes or spaces;
          a value written in groups (123 456 789, 014.048.411, AB 123 456); unlabelled, letters and
          dashed digit groups (A12-345-678)
ACCOUNT   the value after account / acct / acc / billing / invoice / claim / member / policy /
          insurance / health plan / beneficiary (health-plan beneficiary numbers are reported as ACCOUNT)
LICENSE   the value after licence / license / lic / DEA / NPI / certificate / badge / serial
URL       http(s)://..., www...., and bare host names under a common top-level domain (bit.ly/x)
IP        IPv4 dotted quads (each part 0-255), full and "::"-compressed IPv6
ADDRESS   a street address: number, optional direction, one to four capitalised words and a street
          suffix (St, Street, Ave, Rd, Blvd, Lane, Dr, Ct, Way, Hwy, ...), an apartment or suite, and the
          city and state after it; P.O. Box numbers
ZIP       a 5- or 9-digit ZIP only after a US state (code or name) or "zip" / "postal code"; any
          12345-6789; UK and Canadian postcodes (SW1A 1AA, K1A 0B6). A lone 5-digit number is never
          scrubbed, so lab values survive.
AGE       an age over 89: "92-year-old", "92 yo", "92yo", "92 y/o", "92 y.o.", "92 yrs", "age 95",
          "aged 91", "95 years of age", "ninety-two years old" (the number is replaced: "[AGE]-year-old");
          ages up to 89 are kept
NAME      after a title in any case (Dr, dr., DR., dr, Mr, mrs, Ms, Prof, Doctor, nurse; Miss, not "miss";
          a lower-case "mr" / "ms" only with a period: "mr angiogram", "ms flare";
          an all-caps title without a period only before an all-caps name, so "MS Contin" survives), after a label
          (Patient:, Name:, seen by, signed by, attending, referred by, PCP, ...), before a credential
          (", MD", ", RN", ...), on signature lines ("/s/ ...", "Signed: ..."), and "Firstname Lastname"
          / "Lastname, Firstname" pairs from the bundled name lists (``names.py``). Name tokens may carry
          accents and other Latin, Greek or Cyrillic letters (José Canaríñez).
========  ===========================================================================================

Not covered (no rule can find them reliably): geographic units smaller than a state other than a street
address and a ZIP, names with no context and not in the lists, vehicle and device identifiers without a
label, biometric identifiers, photographs, years that reveal an age over 89, a day and a lower-case "may"
with no year ("29 may": "grade 3 may be"), lower-case "wed", "sat", "sun" before a date, a month alone.
Clinical content is left alone: "5 mg", "BP 120/80", "ICD-10 I21.4", "1/2 tablet", "pain 4/10", ordinals
("second-degree", "the third day"), lone years and eponyms ("Parkinson disease") survive, and so does every
description of ICD-10-CM (a test checks all of them). Recall per class on synthetic corpora the rules were not
written from is in bench/README.md ("De-identification recall").

Every rule runs in time linear in the text (possessive runs where a run of tokens or digits could split more
than one way; no two unbounded runs of one character class side by side); ``find_phi`` and ``scrub`` take a
``time_limit`` in seconds and raise ``ScrubTimeout`` past it (the reader refuses such a text, see readers.py).
"""

from __future__ import annotations

import re
import time
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial

from meddiag_pipelines.deid.names import FIRST_NAMES, SURNAMES

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
        "ADDRESS",
        "ZIP",
        "AGE",
        "NAME",
    )
}


class ScrubTimeout(Exception):
    """Finding the identifiers of one text took longer than its time limit: the text must not be stored, since
    the rules not yet run may have had more to find. The message never quotes the text."""


@dataclass(frozen=True, order=True)
class PhiSpan:
    start: int
    end: int
    kind: str


# --- normalisation --------------------------------------------------------------------------------------

# Folded before NFKC: dashes and minus signs to "-", spaces of every width to " ", invisible marks dropped.
_FOLD = {
    **{chr(c): "-" for c in (0x2010, 0x2011, 0x2012, 0x2013, 0x2014, 0x2015, 0x2212, 0xFE58, 0xFE63, 0xFF0D)},
    **{chr(c): " " for c in (0x00A0, *range(0x2000, 0x200B), 0x202F, 0x205F, 0x3000)},
    **{chr(c): "" for c in (0x00AD, 0x200B, 0x200C, 0x200D, 0x2060, 0xFEFF)},
}


def _normalise(text: str) -> tuple[str, list[int] | None]:
    """The text the rules match on, and for each of its characters the index of the original one (None
    when the text is ASCII and so already normal). Characters are normalised one by one so that every
    span maps back to the original text."""
    if text.isascii():
        return text, None
    parts: list[str] = []
    origin: list[int] = []
    for i, ch in enumerate(text):
        norm = _FOLD[ch] if ch in _FOLD else (ch if ch < "\x80" else unicodedata.normalize("NFKC", ch))
        parts.append(norm)
        origin.extend([i] * len(norm))
    origin.append(len(text))
    return "".join(parts), origin


# --- building blocks --------------------------------------------------------------------------------------

_MONTH = (
    r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?|"
    r"Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)"
)
# Any case, never the start of a longer word ("marrow", "septum", "decreased").
_MON = rf"(?i:{_MONTH})(?![A-Za-z])"
# Without a year beside it a lower-case "may" is the verb: only May / MAY then.
_MON_NOYEAR = rf"(?:(?!may\b){_MON}|May\b|MAY\b)"
_MM = r"(?:0?[1-9]|1[0-2])"
_DD = r"(?:0?[1-9]|[12]\d|3[01])"
_YYYY = r"(?:1[89]\d\d|2[01]\d\d)"
_YY = r"(?:'?\d\d)"
_ORD = r"(?i:st|nd|rd|th)?"
# Days and years in words, as dictated: "the third of May", "March twenty-first", "May twenty-one, nineteen
# sixty-one". Each alternative ends at a word boundary, so "seventeen" never stops at "seven".
_ONES_WORD = "one|two|three|four|five|six|seven|eight|nine"
_ONES_ORD = "first|second|third|fourth|fifth|sixth|seventh|eighth|ninth"
_TEENS_WORD = "ten|eleven|twelve|(?:thir|four|fif|six|seven|eigh|nine)teen"
_TENS_WORD = "twenty|thirty|forty|fifty|sixty|seventy|eighty|ninety"
_DAY_ORD_WORD = (
    rf"(?i:twenty[ \-]?(?:{_ONES_ORD})|thirty[ \-]?first|twentieth|thirtieth|tenth|eleventh|twelfth|"
    rf"(?:thir|four|fif|six|seven|eigh|nine)teenth|{_ONES_ORD})(?![\w\-])"
)
_DAY_CARD_WORD = rf"(?i:twenty(?:[ \-]?(?:{_ONES_WORD}))?|thirty(?:[ \-]?one)?|{_TEENS_WORD}|{_ONES_WORD})(?![\w\-])"
_DAY_ORDINAL = rf"(?:{_DD}(?i:st|nd|rd|th)(?![A-Za-z])|{_DAY_ORD_WORD})"  # 3rd, 21ST, third, twenty-first
_TENS_ONES = rf"(?:{_TENS_WORD})(?:[ \-](?:{_ONES_WORD}))?"
_YEAR_WORDS = (
    rf"(?i:(?:eighteen|nineteen|twenty)[ \-](?:hundred|oh[ \-](?:{_ONES_WORD})|{_TEENS_WORD}|{_TENS_ONES})|"
    rf"two[ \-]thousand(?:[ \-]and)?(?:[ \-](?:{_TEENS_WORD}|{_TENS_ONES}|{_ONES_WORD}))?)(?![\w\-])"
)
_YEAR = rf"(?:{_YYYY}(?!\d)|'\d\d(?!\d)|{_YEAR_WORDS})"  # 2019, '19, nineteen sixty-one
_AND_YEAR = rf"(?:,?[ \t]+{_YEAR})?"
# Weekdays: full names and most abbreviations in any case; "Sat", "Sun", "Wed" capitalised or upper case only
# ("sat up", "sun exposure").
_WEEKDAY = (
    r"(?:(?i:monday|tuesday|wednesday|thursday|friday|saturday|sunday|mon|tues?|thu(?:rs?)?|fri)|"
    r"(?:Weds?|Sat|Sun|WEDS?|SAT|SUN))(?![A-Za-z])"
)
# The letters every month name holds and every weekday holds: a text without them skips those rules.
_HAS_MONTH = r"(?i:jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)"
_HAS_WEEKDAY = r"(?i:mon|tue|wed|thu|fri|sat|sun)"
_DSEP = r"[\s/.\-]{0,3}"  # between the parts of a written date: "14 Mar", "17/Apr/", "14MAR", "Mar. 14,"
_SEP = r"[\s:#.\-]*"  # between a label and its value: "MRN: 123", "MRN #123", "MRN - 123"
_NUMBER_WORD = r"(?:number|no\.?|num\.?|nbr|nr\.?|#|id)"
_UNIT = r"(?i:mg|mcg|g|kg|ml|l|units?|tabs?|tablets?|caps?|capsules?|doses?|times|%|mmol|meq|mmhg|bpm|cm|mm)\b"
# A record number written in groups after its label: "123 456 789", "014.048.411", "1 331 527", "AB 123 456",
# "Z502 127 081", "XYZ 123456789" (upper-case letters only; possessive runs: the digits split one way).
_ID_GROUPED = r"(?:(?-i:[A-Z]{1,4})[ \-]?)?(?:\d{1,6}+(?:[ .\-]\d{2,6}+){1,5}+|\d{4,}+)(?![\w\-]|\.\d)"
_PHONE_EXT = r"(?:[ \t]*(?i:x|ext\.?|extension)[ \t]*\d{1,5})?"

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
_STATE = rf"(?:\b(?:{'|'.join(_US_STATES)})\b|\b(?:{_US_STATE_NAMES})\b)"
_STREET_SUFFIX = (
    "Street St Avenue Ave Av Road Rd Boulevard Blvd Lane Ln Drive Dr Court Ct Place Pl Way Terrace Ter Circle "
    "Cir Highway Hwy Parkway Pkwy Square Sq Trail Trl Plaza Crescent Alley Row Close Loop Pike Route"
).split()
_STREET_SUFFIXES = "|".join(sorted({form for s in _STREET_SUFFIX for form in (s, s.upper())}, key=len, reverse=True))

# Letters of the Latin, Greek and Cyrillic blocks by case, so name tokens may carry accents (José Núñez);
# combining marks count as lower case (a decomposed "é").
_UPPER = "A-Z" + "".join(c for c in map(chr, range(0xC0, 0x530)) if c.isalpha() and c.isupper())
_LOWER = "a-z" + "".join(c for c in map(chr, range(0xC0, 0x530)) if c.isalpha() and c.islower()) + "\u0300-\u036f"
_LETTER = f"{_UPPER}{_LOWER}"

# A capitalised name token ("Smith", "O'Brien", "McDonald", "Jean-Luc", "SMITH", "Núñez") or an initial ("J.").
# Possessive runs (Python 3.11) so that a token splits one way only: a run of tokens costs linear time.
_NAME_TOKEN = (
    rf"(?:[{_UPPER}](?:[{_LOWER}]{{0,3}}+[’']?[{_UPPER}])?[{_LOWER}]{{1,30}}+(?:-[{_UPPER}][{_LOWER}]{{1,30}}+)?|"
    rf"[{_UPPER}]{{2,30}}+(?:[’'-][{_UPPER}]{{1,30}}+)?|[{_UPPER}]\.)"
    rf"(?![{_LETTER}])"
)
_NAME_SEQ = rf"{_NAME_TOKEN}(?:[ \t]+{_NAME_TOKEN}){{0,3}}"
_CAPS_NAME_SEQ = rf"[{_UPPER}]{{2,30}}+(?:[’'-][{_UPPER}]{{1,30}}+)?(?:[ \t]+[{_UPPER}]{{2,30}}+(?:[’'-][{_UPPER}]{{1,30}}+)?){{0,3}}(?![{_LETTER}])"
_TITLE = r"(?:dr|mr|mrs|ms|mx|prof|doctor|nurse)"  # and "Miss" / "MISS" (a lower-case "miss" is the verb)
_ADDRESS_WORD = rf"(?:[{_UPPER}][{_LOWER}’'.]{{1,30}}+|[{_UPPER}]{{2,30}}+|\d{{1,3}}+(?i:st|nd|rd|th))"

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
    Monday Tuesday Wednesday Thursday Friday Saturday Sunday Tonight Office Visit Appointment
    Appt Said Says Saw Orders Order Aware Notified Recommends Recommended Wants Will Would Should Can Could
    """.split()
)


@dataclass(frozen=True)
class _Rule:
    kind: str
    pattern: re.Pattern[str]
    group: str | int = 0  # the part of the match that is the identifier
    # A character class that every match contains: a text with none of it is not searched (most clinical
    # text has no digit, and most rules need one), which makes scrubbing several times faster.
    needs: str | None = None


_DIGIT = r"\d"


def _r(kind: str, pattern: str, group: str | int = 0, flags: int = 0, needs: str | None = None) -> _Rule:
    return _Rule(kind, re.compile(pattern, flags), group, needs)


_RULES: list[_Rule] = [
    # ---- contact and network identifiers (least ambiguous first)
    _r("EMAIL", r"(?<![A-Za-z0-9._%+\-])[A-Za-z0-9._%+\-]{1,64}@[A-Za-z0-9.\-]{1,253}\.[A-Za-z]{2,24}\b", needs="@"),
    _r("URL", r"(?i)\b(?:https?://|ftp://|www\.)[^\s<>\"'\])]+[^\s<>\"'\]).,;:!?]", needs="[:.]"),
    _r(
        "URL",
        r"(?i)(?<![\w.@\-])(?:[a-z0-9](?:[a-z0-9\-]{0,61}[a-z0-9])?\.){1,4}"
        r"(?:com|org|net|edu|gov|io|ly|co|us|uk|ca|de|fr|info|biz|health|me)(?![\w\-])(?:/[^\s<>\"'\])]*[^\s<>\"'\]).,;:!?])?",
        needs=r"\.",
    ),
    _r(
        "IP",
        r"(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?!\.?\d)",
        needs=_DIGIT,
    ),
    _r("IP", r"(?i)\b(?:[0-9a-f]{1,4}:){7}[0-9a-f]{1,4}\b", needs=":"),
    _r(
        "IP",
        r"(?i)(?<![\w:])(?:[0-9a-f]{1,4}(?::[0-9a-f]{1,4}){0,5}::(?:[0-9a-f]{1,4}(?::[0-9a-f]{1,4}){0,5})?|::[0-9a-f]{1,4}(?::[0-9a-f]{1,4}){0,5})(?![\w:])",
        needs=":",
    ),
    _r("SSN", r"(?<![\d\-.])\d{3}([\-. ])\d{2}\1\d{4}(?![\d\-]|\.\d)", needs=_DIGIT),
    _r(
        "SSN",
        rf"(?i)\b(?:SSN|SS#|social security(?: {_NUMBER_WORD})?){_SEP}(?:is\s+)?(?P<v>\d{{3}}[\s.\-]{{0,3}}\d{{2}}[\s.\-]{{0,3}}\d{{4}})\b",
        "v",
        needs=_DIGIT,
    ),
    # ---- labelled record numbers: the value after the label
    _r(
        "MRN",
        rf"(?i)\b(?:MRN|MR\.?[ \t]*{_NUMBER_WORD}|MR[ \t]*:|medical[ \t]+record(?:[ \t]*{_NUMBER_WORD})?|"
        rf"med\.?[ \t]?rec(?:ord)?\.?(?:[ \t]*{_NUMBER_WORD})?|chart(?:[ \t]*{_NUMBER_WORD})?|record[ \t]*{_NUMBER_WORD}|"
        rf"patient[ \t]*(?:id|identifier|{_NUMBER_WORD})|pt\.?[ \t]*id|ID[ \t]*(?:#|:|no\b\.?|number)|identifier|"
        rf"hospital[ \t]*{_NUMBER_WORD}|unit[ \t]*{_NUMBER_WORD}|encounter(?:[ \t]*{_NUMBER_WORD})?)(?![A-Za-z]){_SEP}(?:is\s+|of\s+)?"
        rf"(?P<v>{_ID_GROUPED}|[A-Z]{{0,4}}-?\d[\dA-Z\-]{{3,}})\b",
        "v",
        needs=_DIGIT,
    ),
    _r(
        "ACCOUNT",
        rf"(?i)\b(?:account|acct\.?|acc\.?|a/c|billing|invoice|claim|member|subscriber|policy|insurance|"
        rf"health plan|beneficiary|medicaid|medicare)(?:[ \t]*{_NUMBER_WORD})?(?![A-Za-z]){_SEP}(?:is\s+)?"
        rf"(?P<v>{_ID_GROUPED}|[A-Z]{{0,4}}-?\d[\dA-Z\-]{{4,}})\b",
        "v",
        needs=_DIGIT,
    ),
    _r(
        "LICENSE",
        rf"(?i)\b(?:licen[cs]e|lic\.?|DEA|NPI|certificate|cert\.?|badge|registration|serial|"
        rf"driver'?s licen[cs]e|DL)(?:[ \t]*{_NUMBER_WORD})?(?![A-Za-z]){_SEP}(?:is\s+)?"
        rf"(?P<v>{_ID_GROUPED}|[A-Z]{{0,4}}-?\d[\dA-Z\-]{{4,}})\b",
        "v",
        needs=_DIGIT,
    ),
    # ---- phone and fax (the kind is decided by the words just before, see _phone_kind)
    _r(
        "PHONE",
        rf"(?<![\w.+])(?:\+?1[\s.\-]?)?(?:\(\d{{3}}\)[\s.\-]?|\d{{3}}[\s./\-])\d{{3}}[\s.\-]\d{{4}}{_PHONE_EXT}(?![\w])",
        needs=_DIGIT,
    ),
    _r(
        "PHONE",
        rf"(?<![\w.+])(?:\+|\b00)[1-9]\d{{0,2}}(?=(?:[\s.\-()]{{0,3}}\d){{7,14}})[\s.\-]?(?:\(0?\d{{1,4}}\)[\s.\-]?)?"
        rf"\d{{1,5}}+(?:[\s.\-]?\d{{1,5}}+){{1,5}}{_PHONE_EXT}(?![\w])",  # possessive: a digit run splits one way
        needs=_DIGIT,
    ),
    _r(
        "PHONE",
        r"(?i)\b(?:phone|tel|telephone|cell|mobile|pager|beeper|call(?:ed)?(?:\s+back)?|fax|contact|"
        r"reach(?:ed)?(?:\s+(?:him|her|them|me|us))?\s+at)\b[\s:#.\-]*(?:number\s*|no\.?\s*|is\s+|at\s+)?"
        r"(?P<v>\d{3}[ .\-]?\d{7}|\d{3}-\d{4})\b",
        "v",
        needs=_DIGIT,
    ),
    # ---- dates
    # numbers: 03/14/2023, 3/14/'23, 03 / 14 / 2023, 14.03.2023, 2023-03-14, 03/2023, 2023-03, 4 10 1991, 20230314
    _r("DATE", rf"(?<![\d/.\-]){_MM}([/\-.]|[ \t]/[ \t]){_DD}\1'?(?:{_YYYY}|\d{{2}})(?![\d/\-]|\.\d)", needs=_DIGIT),
    _r("DATE", rf"(?<![\d/.\-]){_DD}([/\-.]|[ \t]/[ \t]){_MM}\1'?(?:{_YYYY}|\d{{2}})(?![\d/\-]|\.\d)", needs=_DIGIT),
    _r("DATE", rf"(?<![\d/.\-]){_YYYY}([/\-.]|[ \t]/[ \t]){_MM}\1{_DD}(?![\d/\-]|\.\d)", needs=_DIGIT),
    _r("DATE", rf"(?<![\d/.\-]){_MM}[/\-]{_YYYY}(?![\d/\-]|\.\d)", needs=_DIGIT),
    _r("DATE", rf"(?<![\d/.\-]){_YYYY}-(?:0[1-9]|1[0-2])(?![\d/\-]|\.\d)", needs=_DIGIT),
    _r("DATE", rf"(?<![\d/.\-]){_MM} {_DD} {_YYYY}(?![\d/\-]|\.\d)", needs=_DIGIT),
    _r("DATE", rf"\b{_YYYY}{_MM.replace('0?', '0')}{_DD.replace('0?', '0')}(?:(?=T\d\d)|\b)", needs=_DIGIT),
    # day month [year]: 14 Mar 2023, 17/Apr/2023, 14MAR1931, 14-MAR-31, 14th of March
    _r("DATE", rf"\b{_DD}{_ORD}(?:[ \t]+of)?{_DSEP}{_MON}\.?,?{_DSEP}(?:{_YYYY}|{_YY})(?!\d)", needs=_DIGIT),
    _r("DATE", rf"\b{_DD}{_ORD}(?:[ \t]+of)?[\s\-]+{_MON_NOYEAR}\.?", needs=_DIGIT),
    # month day [year]: March 14, 2023, MARCH 14 2023, Mar-14-2023, Apr/17/2023, Mar 14
    _r("DATE", rf"\b{_MON}\.?{_DSEP}{_DD}{_ORD},?{_DSEP}{_YYYY}(?!\d)", needs=_DIGIT),
    _r("DATE", rf"\b{_MON_NOYEAR}\.?[\s/\-]{{1,3}}{_DD}{_ORD}\b(?!\s*{_UNIT}|[/.]\d)", needs=_DIGIT),
    # days and years in words: the third of May, 3rd of May 2021, twenty-first March, May the 3rd, March
    # twenty-first, Sept. 3rd, may 3rd, may fifth, 2002 (a lower-case "may" before a day in words only with a
    # year: "may first try ...")
    _r("DATE", rf"\b{_DAY_ORDINAL}[ \t]+of[ \t]+{_MON}\.?{_AND_YEAR}", needs=_HAS_MONTH),
    _r("DATE", rf"\b{_DAY_ORD_WORD}[ \t]+{_MON_NOYEAR}\.?{_AND_YEAR}", needs=_HAS_MONTH),
    _r("DATE", rf"\b{_DD}{_ORD}[\s\-]+{_MON_NOYEAR}\.?,?[ \t]+{_YEAR_WORDS}", needs=_HAS_MONTH),
    _r(
        "DATE",
        rf"\b(?:{_MON_NOYEAR}\.?,?[ \t]+(?:the[ \t]+)?{_DAY_ORDINAL}{_AND_YEAR}|"
        rf"may[ \t]+(?:the[ \t]+)?(?:{_DD}(?i:st|nd|rd|th)\b{_AND_YEAR}|{_DAY_ORD_WORD},?[ \t]+{_YEAR}))",
        needs=_HAS_MONTH,
    ),
    # March twenty-one, May twenty one, 2019; not "May two nurses", "March one block", "May one of us"
    _r(
        "DATE",
        rf"\b{_MON_NOYEAR}\.?[ \t]+{_DAY_CARD_WORD}(?![ \t]+(?:of|or|more|{_UNIT}|(?i:[a-z]+s)\b)){_AND_YEAR}",
        needs=_HAS_MONTH,
    ),
    # a weekday and a day with no month: "Friday the 13th", "Tue 5/3" (before any other date, see _with_weekday)
    _r(
        "DATE",
        rf"\b{_WEEKDAY}\.?,?[ \t]+(?:the[ \t]+{_DAY_ORDINAL}|{_MM}/{_DD}(?![\d/]|\.\d))",
        needs=_HAS_WEEKDAY,
    ),
    # month year: March 2023, June of 1940, mar-2023, Dec '13, Dec-96, August nineteen sixty-one
    _r("DATE", rf"\b{_MON}\.?,?(?:[ \t]+of)?[\s/.\-]{{1,3}}(?:{_YYYY}\b|'\d\d\b|{_YEAR_WORDS})", needs=_HAS_MONTH),
    _r("DATE", rf"\b{_MON}\.?[/\-]'?\d\d(?![\d/\-]|\.\d)", needs=_DIGIT),
    _r("DATE", rf"\b{_MON_NOYEAR}(?=\s+(?:of\s+)?(?:this|last|next)\s+year)"),
    _r(
        "DATE",
        r"(?i)\b(?:on|since|from|until|till|through|thru|dated?|DOB|D\.O\.B\.|born|admitted|discharged|"
        r"seen|visit|before|after|starting|effective|collected|drawn|reported|signed)\b"
        rf"[\s:]+(?P<v>{_MM}/{_DD}(?![\d/]|\.\d)|{_YYYY}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\b)",
        "v",
        needs=_DIGIT,
    ),
    _r("DATE", rf"(?<![\d/]){_MM}/{_DD}(?=\s*(?:-|to|through|and)\s*{_MM}/{_DD}(?![\d/]))", needs=_DIGIT),
    # ---- an unlabelled record number of letters and dashed digit groups: A12-345-678 (not T2-N1-M0, I20-I25)
    _r("MRN", r"(?<![\w\-])[A-Z]{1,3}\d{1,4}(?:-\d{2,6}){2,4}(?![\w\-]|\.\d)", needs=_DIGIT),
    # ---- street addresses (with the city and state after them) and P.O. boxes
    _r(
        "ADDRESS",
        rf"\b\d{{1,6}}[A-Za-z]?(?:-\d{{1,4}})?[ \t]+(?:(?:[NSEW]|North|South|East|West)\.?[ \t]+)?"
        rf"(?!(?i:a\.?m|p\.?m)\b)(?:{_ADDRESS_WORD}[ \t]+){{1,4}}(?:{_STREET_SUFFIXES}|(?i:street|avenue|road|boulevard|lane|drive))(?![\w])\.?"
        rf"(?:,?[ \t]*(?i:apt|apartment|suite|ste|unit|#)\.?[ \t]*#?[\w\-]{{1,6}})?"
        rf"(?:,[ \t]*[{_UPPER}][{_LOWER}]{{1,30}}(?:[ \t]+[{_UPPER}][{_LOWER}]{{1,30}}){{0,2}}(?=,?[ \t]*{_STATE}))?",
        needs=_DIGIT,
    ),
    _r("ADDRESS", r"(?i)\bP\.?[ \t]?O\.?[ \t]*Box[ \t]*#?\d{1,7}\b", needs=_DIGIT),
    # ---- ZIP and postal codes: a US ZIP only with an address context
    _r("ZIP", r"(?<![\d\-])\d{5}-\d{4}(?![\d\-])", needs=_DIGIT),
    _r(
        "ZIP",
        rf"(?:\b(?:{'|'.join(_US_STATES)})\.?,?\s++|\b(?:{_US_STATE_NAMES}),?\s++|"
        r"(?i:\bzip(?:\s*+code)?|\bpostal\s*+code|\bpost\s*+code)[\s:#]*+)(?P<v>\d{5})(?![\d\-])",
        "v",
        needs=_DIGIT,
    ),
    _r("ZIP", r"\b(?:[A-Z]{1,2}\d[A-Z\d]?|GIR)[ \t]\d[A-Z]{2}\b", needs=_DIGIT),  # UK: SW1A 1AA
    _r(
        "ZIP", r"\b[ABCEGHJ-NPRSTVXY]\d[A-Z][ \t]\d[A-Z]\d\b", needs=_DIGIT
    ),  # Canada: K1A 0B6 (the space is required: T2N1M0 is TNM)
    # ---- ages over 89
    _r(
        "AGE",
        r"(?i)\b(?P<v>9\d|1[01]\d)(?=[\s\-]*(?:years?|yrs?|y)[\s\-.]*(?:old|of age|o\b\.?)|\s*y/o\b|\s*y\.\s?o\b|"
        r"\s*yo\b|[\s\-]*(?:year|yr)s?\b)",
        "v",
        needs=_DIGIT,
    ),
    _r(
        "AGE",
        r"(?i)\b(?:age[ds]?)\s*:?\s*(?:of\s+)?(?P<v>9\d|1[01]\d)\b(?!\s*(?:%|mg|kg|ml|mmhg|bpm|/))",
        "v",
        needs=_DIGIT,
    ),
    _r(
        "AGE",
        r"(?i)\b(?P<v>ninety(?:[\s\-]+(?:one|two|three|four|five|six|seven|eight|nine))?|one[\s\-]+hundred(?:[\s\-]+and)?"
        r"(?:[\s\-]+(?:one|two|three|four|five|six|seven|eight|nine|ten))?)(?=[\s\-]+(?:years?|yrs?)\b)",
        "v",
    ),
    _r("AGE", r"(?i)\b(?:nonagenarian|centenarian)\b"),
    # ---- names with context
    # a title in any case before capitalised names: Dr. Smith, dr. Núñez, DR. Smith, Mrs Jones, nurse Ann
    _r("NAME", rf"\b(?:(?i:{_TITLE})\.[ \t]*|(?:{_TITLE}|{_TITLE.title()}|Miss)[ \t]+)(?P<v>{_NAME_SEQ})", "v"),
    # an all-caps title with no period only before an all-caps name (DR SMITH; not "MS Contin", "DR tablet")
    _r("NAME", rf"\b(?:{_TITLE.upper()}|MISS)[ \t]+(?P<v>{_CAPS_NAME_SEQ})", "v"),
    # a title with a period, or a lower-case dr / mrs / prof without one, before one lower-case word: "seen by
    # dr. smith today", "dr smith" ("mr" and "ms" need a period: "mr angiogram", "ms flare")
    _r("NAME", rf"\b(?:(?i:{_TITLE})\.[ \t]*|(?:dr|mrs|prof)[ \t]+)(?P<v>[{_LOWER}]{{2,30}}(?![{_LETTER}]))", "v"),
    _r(
        "NAME",
        r"(?i:\b(?:patient(?:'s)?\s+name|pt\.?\s+name|name|patient|pt|cc|RN|nurse|signature|signed))"
        rf"[ \t]*:[ \t]*(?P<v>{_NAME_SEQ})",
        "v",
        needs=":",
    ),
    _r(
        "NAME",
        rf"(?i:\bname)[ \t]*:[ \t]*(?P<v>{_NAME_TOKEN}(?:[ \t-]{_NAME_TOKEN})?,[ \t]*{_NAME_SEQ})",
        "v",
        needs=":",
    ),
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
        rf"(?<![{_LETTER}.’'-])(?P<v>{_NAME_TOKEN}(?:[ \t]+{_NAME_TOKEN}){{1,3}}),?[ \t]+"
        r"(?:MD|M\.D\.|DO|D\.O\.|RN|NP|PA-C|PA|PhD|DDS|DPM|FNP|CNM|CRNA|LPN|MBBS|FRCP|FACC|FACS)\b",
        "v",
    ),
    _r("NAME", rf"(?m)(?:^|\n)[ \t]*(?:/s/|--+|Signed:?|Signature:?|Sincerely,?)[ \t]*(?P<v>{_NAME_SEQ})", "v"),
]

_NEEDS = {rule.needs: re.compile(rule.needs) for rule in _RULES if rule.needs is not None}
_CAP_WORD = re.compile(r"\b[A-Z][a-z]+\b")
_REST_OF_NAME = re.compile(rf"(?:[ \t]+[A-Z]\.?)?[ \t]+(?P<last>{_NAME_TOKEN})")
_WORD_PAIR = re.compile(r"(?=\b([A-Za-z]+)[ \t]+([A-Za-z]+)\b)")
_LAST_FIRST = re.compile(r"\b(?P<last>[A-Z][a-z]+(?:'[A-Z][a-z]+)?),[ \t]*(?P<first>[A-Z][a-z]+)\b")


_SCORE_LIKE = re.compile(r"\d{1,2}/(?:10|5)")  # a month/day pair that reads as a 0-10 or 0-5 score
# Words after which "4/10" or "5/5" is a score, not a day: "pain 7/10, improved from 4/10", "strength 4/5".
_SCORE_WORDS = re.compile(
    r"(?i)\b(?:pain|score|scale|rated|rates|severity|intensity|strength|power|grade|gcs|apgar|/10)\b"
)


def _is_score(text: str, start: int, end: int) -> bool:
    """A month/day pair that is a score: x/10 or x/5 after a score word in its sentence ("pain 4/10 ... from
    7/10"). The price: "pain since 4/10" stays, as a score."""
    if not _SCORE_LIKE.fullmatch(text, start, end):
        return False
    before = re.split(r"[.;\n]\s", text[max(0, start - 60) : start])[-1]
    return _SCORE_WORDS.search(before) is not None


def _phone_kind(text: str, start: int) -> str:
    """FAX when "fax" comes shortly before the number in the same sentence, PHONE otherwise."""
    before = re.split(r"[.;\n]\s", text[max(0, start - 48) : start].lower())[-1]
    return "FAX" if "fax" in before or "facsimile" in before else "PHONE"


def _name_value(text: str, start: int, end: int) -> tuple[int, int] | None:
    """Trim a captured name sequence to its leading tokens that are not common words (in any case)."""
    tokens = list(re.finditer(r"\S+", text[start:end]))
    kept_end = None
    for tok in tokens:
        word = tok.group().rstrip(".,'’")
        if word in _NOT_NAMES or word.title() in _NOT_NAMES:
            break
        kept_end = start + tok.end()
    if kept_end is None:
        return None
    return start, kept_end


def _check_clock(deadline: float | None) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise ScrubTimeout("finding the identifiers of the text took longer than its time limit")


def _timed(matches: Iterator[re.Match[str]], deadline: float | None) -> Iterator[re.Match[str]]:
    """``matches``, checking the clock after each one (a long text can have thousands)."""
    for m in matches:
        _check_clock(deadline)
        yield m


def _raw_spans(text: str, deadline: float | None = None) -> list[tuple[int, int, str, int]]:
    """The spans every rule finds. The clock is checked before each rule and after each match: every rule runs
    in time linear in the text (no nested unbounded repetition, possessive runs where tokens could split more
    than one way), so a text over its limit is stopped within one search of it."""
    spans: list[tuple[int, int, str, int]] = []
    present = {needs: pattern.search(text) is not None for needs, pattern in _NEEDS.items()}
    for priority, rule in enumerate(_RULES):
        _check_clock(deadline)
        if rule.needs is not None and not present[rule.needs]:
            continue
        for m in _timed(rule.pattern.finditer(text), deadline):
            start, end = m.span(rule.group)
            if start < 0 or start == end:
                continue
            kind = rule.kind
            if kind == "PHONE":
                kind = _phone_kind(text, m.start())
            elif kind == "DATE" and _is_score(text, start, end):
                continue
            elif kind == "NAME":
                trimmed = _name_value(text, start, end)
                if trimmed is None:
                    continue
                start, end = trimmed
            spans.append((start, end, kind, priority))
    prio = len(_RULES)
    for m in _timed(_CAP_WORD.finditer(text), deadline):
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
    for m in _timed(_WORD_PAIR.finditer(text), deadline):
        # "JOHN SMITH", "john smith": both words in the lists, in the same case.
        first, last = m.group(1), m.group(2)
        if (first.isupper() or first.islower()) and (last.isupper() == first.isupper()):
            if first.title() in FIRST_NAMES and last.title() in SURNAMES:
                spans.append((m.start(1), m.end(2), "NAME", prio))
    for m in _timed(_LAST_FIRST.finditer(text), deadline):
        if m.group("last") in SURNAMES and m.group("first") in FIRST_NAMES:
            spans.append((m.start(), m.end(), "NAME", prio))
    return spans


_WEEKDAY_BEFORE = re.compile(rf"\b{_WEEKDAY}\.?,?[ \t]+(?:the[ \t]+)?\Z")


def _with_weekday(text: str, span: tuple[int, int, str, int]) -> tuple[int, int, str, int]:
    """A date span grown back over the weekday right before it ("Tues., Sept. 3rd"): the two are one date."""
    start, end, kind, priority = span
    before = _WEEKDAY_BEFORE.search(text, max(0, start - 24), start) if kind == "DATE" else None
    return span if before is None else (before.start(), end, kind, priority)


def find_phi(text: str, time_limit: float | None = None) -> list[PhiSpan]:
    """Every identifier found in ``text``, as sorted, non-overlapping spans of ``text`` itself (overlaps are
    merged); the rules match on the normalised text (``_normalise``). Raise ``ScrubTimeout`` when it takes
    longer than ``time_limit`` seconds (None: no limit)."""
    if not text:
        return []
    deadline = None if time_limit is None else time.monotonic() + time_limit
    norm, origin = _normalise(text)
    spans = map(partial(_with_weekday, norm), _raw_spans(norm, deadline))
    raw = sorted(spans, key=lambda s: (s[0], -(s[1] - s[0]), s[3]))
    merged: list[list] = []
    for start, end, kind, _ in raw:
        if merged and start < merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
            continue
        merged.append([start, end, kind])
    if origin is None:
        return [PhiSpan(s, e, k) for s, e, k in merged]
    return [PhiSpan(origin[s], origin[e - 1] + 1, k) for s, e, k in merged]


def scrub(text: str, time_limit: float | None = None) -> str:
    """``text`` with every identifier found replaced by its typed placeholder, e.g. ``[DATE]``; raise
    ``ScrubTimeout`` when finding them takes longer than ``time_limit`` seconds (None: no limit)."""
    if not text:
        return text
    out: list[str] = []
    pos = 0
    for span in find_phi(text, time_limit):
        out.append(text[pos : span.start])
        out.append(PLACEHOLDERS[span.kind])
        pos = span.end
    out.append(text[pos:])
    return "".join(out)
