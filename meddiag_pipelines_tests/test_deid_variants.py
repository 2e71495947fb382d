"""De-identification by class, not by example: generated variants of each PHI class (hypothesis) are always
replaced; recall on the independent synthetic corpus of bench/deid.py holds per class; no planted value
survives; every ICD-10-CM description comes out unaltered; text around an identifier is left byte for byte."""

from __future__ import annotations

import calendar
import random
import re
from datetime import date

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.deid import found, icd_descriptions, synthetic_corpus, synthetic_name
from bench.deid_grammar import cardinal_words, ordinal_suffix, ordinal_words, year_words
from meddiag_pipelines.deid.names import FIRST_NAMES, SURNAMES
from meddiag_pipelines.deid.rules import _RULES, PLACEHOLDERS, _normalise, find_phi, scrub

DASHES = ["-", "\u2010", "\u2011", "\u2012", "\u2013", "\u2014", "\u2212"]
SPACES = [" ", "\u00a0", "\u2009", "\u202f", "\u2007"]
MONTHS = list(calendar.month_name)[1:]  # English: Python leaves the C locale unless told
BEFORE = ["", "Seen ", "Noted: ", "Pt reports that ", "Hx CHF. "]
AFTER = ["", ".", " per chart.", ", stable.", "; follow up in clinic."]

dashes, spaces = st.sampled_from(DASHES), st.sampled_from(SPACES)
contexts = st.tuples(st.sampled_from(BEFORE), st.sampled_from(AFTER))


def assert_replaced(value: str, before: str, after: str) -> None:
    text = before + value + after
    spans = [(s.start, s.end) for s in find_phi(text)]
    assert found(spans, text, len(before), len(before) + len(value)), (text, scrub(text))
    assert any(p in scrub(text) for p in PLACEHOLDERS.values())


@st.composite
def dates(draw) -> str:
    d = draw(st.dates(min_value=date(1900, 1, 1), max_value=date(2099, 12, 31)))
    word = MONTHS[d.month - 1]
    month = draw(st.sampled_from([word, word[:3]]))
    month = draw(st.sampled_from([month, month.upper(), month.lower()]))
    if month.lower() == "may":
        month = draw(st.sampled_from(["May", "MAY"]))  # lower-case "may" with no year is the verb
    sep = draw(st.sampled_from(["/", "-", ".", " ", *DASHES[1:]]))
    sp = draw(spaces)
    forms = [
        f"{d.month:02d}/{d.day:02d}/{d.year}",
        f"{d.month}{sep}{d.day}{sep}{d.year}",
        f"{d.year}-{d.month:02d}-{d.day:02d}",
        f"{d.day:02d}.{d.month:02d}.{d.year}",
        f"{month}{sp}{d.day},{sp}{d.year}",
        f"{month} {d.day} {d.year}",
        f"{d.day}{sp}{month}{sp}{d.year}",
        f"{d.day:02d}{sep}{month}{sep}{d.year}",
        f"{d.day:02d}{month}{d.year}",
        f"{d.day:02d}{sep}{month}{sep}{d.year % 100:02d}",
        f"{month}{sep}{d.day:02d}{sep}{d.year}",
        f"{month} {d.year}",
        f"{word} {d.day}",
        f"{d.day} {word}",
        f"{word[:3]}. {d.day}",
    ]
    return draw(st.sampled_from(forms))


WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]


@st.composite
def word_dates(draw) -> str:
    """Issue 24: dates with the day or year in words or as an ordinal, any month case and abbreviation, with or
    without the year, after a weekday or not: the third of May, May the 3rd, 3rd of May 2021, MARCH
    TWENTY-FIRST, Sept. 3rd, Tues., Sept. 3rd, '19, March twenty-one, nineteen sixty-one."""
    d = draw(st.dates(min_value=date(1900, 1, 1), max_value=date(2099, 12, 31)))
    word = MONTHS[d.month - 1]
    month = draw(
        st.sampled_from([word, word[:3], word[:3] + "." if len(word) > 3 else word, "Sept." if d.month == 9 else word])
    )
    month = draw(st.sampled_from([month, month.upper(), month.lower()]))
    ordinal = draw(
        st.sampled_from(
            [
                ordinal_words(d.day),
                ordinal_words(d.day).replace("-", " "),
                f"{d.day}{ordinal_suffix(d.day)}",
                f"{d.day}{ordinal_suffix(d.day).upper()}",
            ]
        )
    )
    year = draw(st.sampled_from(["", f" {d.year}", f", {d.year}", f" '{d.year % 100:02d}", f", {year_words(d.year)}"]))
    shapes = [f"{ordinal} of {month}{year}"]  # "the" before it is no part of the date
    verb = month.lower() == "may"
    if not verb or ordinal[0].isdigit() or year:  # a lower-case "may" before a word is the verb, without a year
        shapes += [f"{month} the {ordinal}{year}", f"{month} {ordinal}{year}"]
    if not verb:
        shapes += [f"{ordinal} {month}{year}", f"{month} {cardinal_words(d.day)}{year}"]
    weekday = WEEKDAYS[d.weekday()]
    before = draw(st.sampled_from(["", f"{weekday}, ", f"{weekday.upper()} ", f"{weekday[:3]}. "]))
    return before + draw(st.sampled_from(shapes))


@st.composite
def phones(draw) -> str:
    a, b = draw(st.integers(201, 989)), draw(st.integers(201, 999))
    c = draw(st.integers(0, 9999))
    d = draw(st.sampled_from(["-", ".", " ", *DASHES[1:]]))
    ext = draw(st.sampled_from(["", " x12", " ext. 4455", "x9", " extension 301"]))
    cc = draw(st.integers(2, 99))
    g = draw(st.lists(st.integers(10, 9999), min_size=3, max_size=3))
    forms = [
        f"({a}) {b}{d}{c:04d}",
        f"{a}{d}{b}{d}{c:04d}",
        f"+1 {a} {b} {c:04d}",
        f"1{d}{a}{d}{b}{d}{c:04d}",
        f"+1 ({a}) {b}-{c:04d}",
        f"({a}){b}{d}{c:04d}",
        f"+{cc} {g[0]} {g[1]} {g[2]:04d}",
        f"+{cc}{d}{g[0]}{d}{g[1]}{d}{g[2]:04d}",
        f"00{cc} {g[0]} {g[1]}{g[2]:04d}",
    ]
    return draw(st.sampled_from(forms)) + ext


@st.composite
def ssns(draw) -> str:
    sep = draw(st.sampled_from(["-", ".", " ", *DASHES[1:]]))
    return f"{draw(st.integers(100, 899))}{sep}{draw(st.integers(0, 99)):02d}{sep}{draw(st.integers(0, 9999)):04d}"


LABELS = [
    "MRN",
    "MRN:",
    "mrn #",
    "MR No.",
    "MR #",
    "MR:",
    "medical record",
    "Medical Record No.",
    "med rec #",
    "chart",
    "chart:",
    "Chart No.",
    "acct",
    "Acct #",
    "account",
    "Account No.",
    "patient id",
    "Patient ID:",
    "ID#",
    "ID:",
    "ID No.",
]


@st.composite
def labelled_ids(draw) -> tuple[str, str]:
    label = draw(st.sampled_from(LABELS))
    prefix = draw(st.sampled_from(["", "", "E", "MR", "AC"]))
    sep = draw(st.sampled_from([" ", " - ", ": "] + ([""] if not prefix else [])))  # "MRN12345", never "MRNE12345"
    return f"{label}{sep}", prefix + str(draw(st.integers(10**5, 10**10)))


@st.composite
def ages(draw) -> tuple[str, str, str]:
    n = str(draw(st.integers(90, 115)))
    form = draw(
        st.sampled_from(
            [
                "{} y.o.",
                "{}yo",
                "{} yo",
                "{}-year-old",
                "{} year-old",
                "{}{d}year{d}old",
                "aged {}",
                "age {}",
                "Age: {}",
                "{} y/o",
                "{} years old",
                "{} yrs",
                "{} years of age",
            ]
        )
    )
    form = form.replace("{d}", draw(dashes))
    i = form.index("{}")
    return form[:i], n, form[i + 2 :]


@settings(max_examples=300, deadline=None, database=None)
@given(value=dates(), context=contexts)
def test_any_date_variant_is_replaced(value, context):
    assert_replaced(value, *context)


@settings(max_examples=400, deadline=None, database=None)
@given(value=word_dates(), context=contexts)
def test_any_date_in_words_or_ordinals_is_replaced(value, context):
    assert_replaced(value, *context)


@settings(max_examples=300, deadline=None, database=None)
@given(value=phones(), context=contexts)
def test_any_phone_variant_is_replaced(value, context):
    assert_replaced(value, *context)


@settings(max_examples=150, deadline=None, database=None)
@given(value=ssns(), context=contexts)
def test_any_ssn_variant_is_replaced(value, context):
    assert_replaced(value, *context)


@settings(max_examples=300, deadline=None, database=None)
@given(labelled=labelled_ids(), context=contexts)
def test_any_labelled_record_number_is_replaced(labelled, context):
    label, value = labelled
    assert_replaced(value, context[0] + label, context[1])


@settings(max_examples=200, deadline=None, database=None)
@given(age=ages(), context=st.sampled_from(["", "Pt is a ", "Widow, "]))
def test_any_age_over_89_is_replaced(age, context):
    before, n, after = age
    assert_replaced(n, context + before, after + " with falls")


@settings(max_examples=200, deadline=None, database=None)
@given(
    title=st.sampled_from(
        [
            "Dr.",
            "dr.",
            "DR.",
            "Dr",
            "dr",
            "Mr.",
            "mr.",
            "Mrs",
            "mrs.",
            "Ms.",
            "Prof.",
            "prof.",
            "nurse",
            "Nurse",
            "Doctor",
        ]
    ),
    seed=st.integers(0, 10**9),
    tokens=st.integers(1, 2),
    context=contexts,
)
def test_a_name_after_any_title_is_replaced(title, seed, tokens, context):
    rng = random.Random(seed)
    name = " ".join(synthetic_name(rng) for _ in range(tokens))
    assert_replaced(name, f"{context[0]}{title} ", context[1])


@settings(max_examples=150, deadline=None, database=None)
@given(
    seed=st.integers(0, 10**9),
    suffix=st.sampled_from(
        ["St", "St.", "Street", "Ave", "Avenue", "Rd", "Road", "Blvd", "Lane", "Ln", "Dr", "Ct", "Way"]
    ),
    number=st.integers(1, 99999),
    context=st.sampled_from(["Lives at ", "Address: ", "Discharged to "]),
)
def test_any_street_address_is_replaced(seed, suffix, number, context):
    rng = random.Random(seed)
    assert_replaced(f"{number} {synthetic_name(rng)} {suffix}", context, ", with her son.")


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("DOB 14MAR1931", "14MAR1931"),
        ("seen MARCH 14, 2023", "MARCH 14, 2023"),
        ("CT 17/Apr/2023", "17/Apr/2023"),
        ("call 555\u2013123\u20134567", "555\u2013123\u20134567"),
        ("cell +44 20 7946 0958", "+44 20 7946 0958"),
        ("SSN 123.45.6789", "123.45.6789"),
        ("SSN 123\u201345\u20136789", "123\u201345\u20136789"),
        ("MR No. 4455667", "4455667"),
        ("chart: 3344556", "3344556"),
        ("Dr. Jos\u00e9 Canar\u00ed\u00f1ez saw her", "Jos\u00e9 Canar\u00ed\u00f1ez"),
        ("seen by dr. Smith", "Smith"),
        ("93 y.o. female", "93"),
        ("lives at 12 Oak Street, Springfield, IL", "12 Oak Street"),
        ("Box: P.O. Box 4411", "4411"),
        ("login fe80::1ff:fe23:4567:890a", "fe80::1ff:fe23:4567:890a"),
        ("Dr.\u00a0Smith\u2009on\u00a014\u2011Mar\u20112023", "14\u2011Mar\u20112023"),
        ("Dr. Jose\u0301 Nu\u0301n\u0303ez (decomposed accents)", "Jose\u0301 Nu\u0301n\u0303ez"),
        # issue 24: dates in words and partial dates, ids with separators and spaces, a 3+7 phone
        ("fell on the third of May", "third of May"),
        ("seen May the 3rd", "May the 3rd"),
        ("DOB 3rd of May 2021", "3rd of May 2021"),
        ("since the twenty-first of March", "twenty-first of March"),
        ("on March twenty-first", "March twenty-first"),
        ("quit mid-May 2019", "May 2019"),
        ("seen Sept. 3", "Sept. 3"),
        ("seen Tuesday, Sept. 3rd", "Tuesday, Sept. 3rd"),
        ("Friday the 13th", "Friday the 13th"),
        ("born June of 1940", "June of 1940"),
        ("quit Dec '13", "Dec '13"),
        ("born August nineteen sixty-one", "August nineteen sixty-one"),
        ("DOB 01 / 02 / 1930", "01 / 02 / 1930"),
        ("seen 1/21/'02", "1/21/'02"),
        ("DOB 19470426", "19470426"),
        ("dx 1971-09", "1971-09"),
        ("MRN 123 456 789 on file", "123 456 789"),
        ("med rec no. 014.048.411.", "014.048.411"),
        ("123-45-6789", "123-45-6789"),
        ("ID A12-345-678", "A12-345-678"),
        ("S85-254-496 on the sheet", "S85-254-496"),
        ("Pt ID: AB 123 456", "AB 123 456"),
        ("Member #: Z502 127 081", "Z502 127 081"),
        ("Encounter 1234-567890", "1234-567890"),
        ("call back at 327 8440666", "327 8440666"),
        ("seen by dr smith today", "smith"),
    ],
)
def test_issue_examples_are_replaced(text, value):
    start = text.index(value)
    assert found([(s.start, s.end) for s in find_phi(text)], text, start, start + len(value)), scrub(text)


def test_text_around_an_identifier_is_kept_byte_for_byte():
    text = "Na\u00efve pt, 5\u00a0mg \u00bd tab, \ufb01brosis \u2013 seen 14\u2013Mar\u20132023 by Dr.\u00a0Jos\u00e9 N\u00fa\u00f1ez \u2014 CK 12\u202f345."
    out = scrub(text)
    assert (
        out
        == "Na\u00efve pt, 5\u00a0mg \u00bd tab, \ufb01brosis \u2013 seen [DATE] by Dr.\u00a0[NAME] \u2014 CK 12\u202f345."
    )


# NAME: titled names, 100/100 measured; NAME_BARE: names with no context, 0/100 measured, the known gap (not promised).
SYNTHETIC_RECALL_FLOOR = {
    "DATE": 0.97,
    "PHONE": 0.97,
    "SSN": 0.99,
    "MRN": 0.99,
    "ACCOUNT": 0.99,
    "AGE": 0.99,
    "NAME": 1.0,
    "ADDRESS": 0.97,
    "ZIP": 0.95,
    "EMAIL": 0.99,
    "URL": 0.97,
    "IP": 0.99,
    "NAME_BARE": 0.0,
}


def test_recall_per_class_on_the_independent_synthetic_corpus():
    recall: dict[str, list[bool]] = {}
    listed = {n.lower() for n in FIRST_NAMES | SURNAMES}
    for text, cls, start, end in synthetic_corpus(per_class=100, seed=99):
        spans = [(s.start, s.end) for s in find_phi(text)]
        recall.setdefault(cls, []).append(found(spans, text, start, end))
        if cls.startswith("NAME"):  # drawn independently of the scrubber's own lists
            assert not {w.lower() for w in text[start:end].split()} & listed, text[start:end]
    low = {c: sum(v) / len(v) for c, v in recall.items() if sum(v) / len(v) < SYNTHETIC_RECALL_FLOOR[c]}
    assert set(recall) == set(SYNTHETIC_RECALL_FLOOR) and not low, low


def test_a_rule_skipped_on_a_text_without_the_characters_it_needs_never_matches_without_them():
    """The scrubber skips a rule on a text without its ``needs`` class (for speed), so no match may lack it."""
    texts = [_normalise(text)[0] for text, *_ in synthetic_corpus(per_class=100, seed=99)]
    gated = [rule for rule in _RULES if rule.needs is not None]
    matches = [(rule, m.group()) for rule in gated for t in texts for m in rule.pattern.finditer(t)]
    lacking = [(rule.kind, rule.needs) for rule, match in matches if not re.search(rule.needs, match)]
    assert len(gated) > 30 and lacking == []


def test_no_planted_value_survives_in_the_scrubbed_text():
    corpus = [row for row in synthetic_corpus(per_class=40, seed=5) if row[1] != "NAME_BARE"]
    leaks = [(cls, scrub(text)) for text, cls, start, end in corpus if text[start:end] in scrub(text)]
    assert len(leaks) <= 4, leaks  # a lone 5-digit ZIP with no address word is a known, reported miss
    assert all(cls == "ZIP" for cls, _ in leaks), leaks


CLINICAL_LOOKALIKES = [
    "MS Contin 30 mg q12h; Depakote DR 500 mg BID; Foley 16 Fr placed.",
    "St. Anthony's fire (ergotism); St Louis encephalitis; ST elevation myocardial infarction.",
    "May 5 mg of oxycodone be given? She may 2 tabs.",
    "Marfan syndrome, bone marrow biopsy, decreased septal motion.",
    "Take 3 times a day for 14 days; 1/2 tab; BP 120/80; T2N1M0 tumour; ICD-10 I21.4.",
    "Stage 2 pressure ulcer of sacral region; Type 1 diabetes; 45-year-old; aged 65.",
    "Did not miss Doses; see doctor Monday at 3 PM Dr rounds.",
    # issue 24: ordinals, numbers in words and weekdays that are not dates
    "First episode; second-degree AV block; third trimester; on the fourth day of fever, the sixth of seven children.",
    "She may first try ibuprofen. May two nurses assist? March in place for twenty minutes; may the second dose wait?",
    "Pain 7/10, improved from 4/10; strength 4/5; first of the month; seen Monday, sat up on Sunday, sun exposure.",
    "Encounter for screening; T2-N1-M0; ICD-10 I20-I25; the dr said the dr office will call; mr angiogram; ms flare.",
]


def test_clinical_lookalikes_survive():
    assert [t for t in CLINICAL_LOOKALIKES if scrub(t) != t] == []


def test_an_icd10_sample_is_unaltered():
    altered = [d for d in icd_descriptions(3000) if find_phi(d)]
    assert altered == []


@pytest.mark.slow
def test_every_icd10_description_is_unaltered():
    altered = [d for d in icd_descriptions(None) if find_phi(d)]
    assert altered == [], f"{len(altered)} ICD-10-CM descriptions altered, e.g. {altered[:5]}"


def test_bench_deid_smoke_reports_recall_per_class(capsys):
    from bench.deid import FORMATS, main

    ours = main(["--size", "smoke"])[0]
    assert ours["impl"] == "meddiag" and set(ours["recall"]) == set(FORMATS) and ours["icd_altered"] == 0
    assert '"impl": "meddiag"' in capsys.readouterr().out
