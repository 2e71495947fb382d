"""PHI scrubbing: a canary corpus with planted identifiers measures recall per class; clinical text survives.

The corpus is generated here, seeded: clinical sentence templates, each with one planted identifier of a
known class and format. An identifier counts as found when every non-space character of it lies inside a
span that ``find_phi`` returns (whatever its kind: what matters for privacy is that it is gone); the table
also reports how often the kind was right. Run this file directly to print the table.
"""

from __future__ import annotations

import calendar
import random
import re
from collections import defaultdict
from datetime import date, timedelta

import pytest

from bench.deid import synthetic_name
from meddiag_pipelines.deid.names import FIRST_NAMES, SURNAMES
from meddiag_pipelines.deid.rules import PLACEHOLDERS, PhiSpan, ScrubTimeout, find_phi, scrub
from meddiag_pipelines.text.readers import DEFAULT_DEID_SECONDS

SEED = 7
PER_CLASS = 60
RULE_CLASSES = ["DATE", "PHONE", "FAX", "EMAIL", "SSN", "MRN", "ACCOUNT", "LICENSE", "URL", "IP", "ZIP", "AGE"]

# Names are drawn from an independent source, never from the scrubber's own lists (names.py): syllable-built
# names (bench/deid.py) and the rare names below. With no context they are not found: bare names are measured.
RARE_FIRST = [
    "Zbigniew",
    "Oluwaseun",
    "Thaddeus",
    "Ingrid",
    "Leopold",
    "Svetlana",
    "Casimir",
    "Henrietta",
    "Bartholomew",
    "Ottilie",
]
RARE_LAST = [
    "Okonkwo",
    "Quimby",
    "Vanderhoef",
    "Przybylski",
    "Abernathy",
    "Featherstone",
    "Oyelaran",
    "Castellanos",
    "Lindqvist",
    "Marchetti",
]

MONTHS = list(calendar.month_name)[1:]  # English: Python leaves the C locale unless told


def _rand_date(rng: random.Random) -> date:
    return date(1950, 1, 1) + timedelta(days=rng.randrange(0, 27000))


def _date_value(rng: random.Random) -> tuple[str, str]:
    """(value, template family): 'full' values stand anywhere, 'short' ones (3/14) need a date word before."""
    d = _rand_date(rng)
    mon = MONTHS[d.month - 1]
    suffix = {1: "st", 2: "nd", 3: "rd", 21: "st", 22: "nd", 23: "rd", 31: "st"}.get(d.day, "th")
    fmt = rng.randrange(16)
    values = [
        f"{d.month:02d}/{d.day:02d}/{d.year}",
        f"{d.month}/{d.day}/{d.year % 100:02d}",
        d.isoformat(),
        f"{mon} {d.day}, {d.year}",
        f"{mon[:3]} {d.day}",
        f"{d.day} {mon[:3]} {d.year}",
        f"{d.day} {mon} {d.year}",
        f"{d.day}{suffix} of {mon}",
        f"{d.month:02d}-{d.day:02d}-{d.year}",
        f"{mon} {d.year}",
        f"{d.year}/{d.month:02d}/{d.day:02d}",
        f"{mon[:3]}. {d.day}, {d.year}",
        f"{d.month}/{d.day}",
        f"{d.month:02d}/{d.day:02d}",
        f"{d.month}/{d.day}",
        f"{d.month}/{d.day}",
    ]
    return values[fmt], ("short" if fmt >= 12 else "full")


def _digits(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("0123456789") for _ in range(n))


def _phone(rng: random.Random) -> str:
    a, b, c = f"{rng.randrange(200, 999)}", f"{rng.randrange(200, 999)}", _digits(rng, 4)
    return rng.choice(
        [
            f"({a}) {b}-{c}",
            f"{a}-{b}-{c}",
            f"{a}.{b}.{c}",
            f"+1 {a} {b} {c}",
            f"{a} {b} {c}",
            f"1-{a}-{b}-{c}",
            f"({a}){b}-{c}",
        ]
    )


def _name(rng: random.Random, synthetic: bool) -> tuple[str, str]:
    if synthetic:
        return synthetic_name(rng), synthetic_name(rng)
    return rng.choice(RARE_FIRST), rng.choice(RARE_LAST)


TEMPLATES: dict[str, list[str]] = {
    "DATE_full": [
        "Patient admitted {} with chest pain, troponin 0.04.",
        "Last colonoscopy {} showed two small polyps.",
        "Date of service: {}. BP 132/84, HR 78.",
        "Symptoms began {} after a fall at home.",
        "MRI brain obtained {} was unremarkable.",
        "Follow-up visit scheduled for {} in cardiology clinic.",
        "Started metformin 500 mg twice daily {}.",
        "Discharged home {} in stable condition.",
    ],
    "DATE_short": [
        "Seen in clinic on {} for cough.",
        "Fever since {} with chills.",
        "Off work from {} per orthopedics.",
        "Labs drawn {} show Hgb 10.2.",
        "Admitted {} for DKA.",
        "Continue antibiotics until {}.",
    ],
    "PHONE": [
        "Call the patient at {} with results.",
        "Daughter's phone: {}.",
        "Contact number {} (home).",
        "Reached wife at {} this morning.",
        "Pharmacy phone {} confirmed the refill.",
        "Cell {} - leave a message.",
        "If worse, patient will call {} after hours.",
    ],
    "FAX": [
        "Fax results to {} attention cardiology.",
        "Fax: {}",
        "Please fax the discharge summary to {}.",
        "Referral faxed to {} today.",
        "PCP fax number {}.",
    ],
    "EMAIL": [
        "Patient prefers e-mail: {}.",
        "Results sent to {} via portal.",
        "Contact {} for scheduling.",
        "Daughter ({}) requested copies of records.",
    ],
    "SSN": [
        "SSN {} verified at registration.",
        "Social security number {} on file.",
        "Identity confirmed with SSN: {}.",
        "Patient SS# {} per face sheet.",
    ],
    "MRN": [
        "MRN: {}. 67 M with CHF exacerbation.",
        "Medical record number {} reviewed.",
        "Med rec #{} - outside records requested.",
        "Chart no. {}; allergies NKDA.",
        "Patient ID: {} transferred from ED.",
        "MRN {} admitted to 4 West.",
        "medical record # {} merged with prior chart.",
    ],
    "ACCOUNT": [
        "Account number {} billed to Medicare.",
        "Acct #{} - self pay.",
        "Insurance member ID {} verified.",
        "Policy no. {} active through year end.",
        "Claim #{} denied, appeal filed.",
        "Billing account: {}.",
        "Health plan beneficiary number {} on card.",
    ],
    "LICENSE": [
        "Prescriber DEA # {}.",
        "NPI {} on the prescription.",
        "Driver's license {} used as photo ID.",
        "State medical license number {} verified.",
        "License: {} (nursing).",
        "Device serial number {} recorded for the pacemaker.",
    ],
    "URL": [
        "See results at {} for details.",
        "Education handout: {}",
        "Images uploaded to {} for review.",
        "Patient found advice on {} and stopped the statin.",
    ],
    "IP": [
        "Remote access logged from {} at 02:14.",
        "PACS workstation {} could not load the study.",
        "Telehealth session connected from IP {}.",
    ],
    "ZIP": [
        "Lives at 12 Oak Street, Springfield, IL {} with her son.",
        "Address: 400 Main St, Boston, MA {}.",
        "Home ZIP code {} - outside service area.",
        "Zip: {}",
        "Moved to Worcester, Massachusetts {} last year.",
        "Mailing address 55 Elm Rd Apt 3, Austin TX {}.",
    ],
    "AGE": [
        "{}-year-old woman with syncope.",
        "Patient is a {} yo male with dyspnea.",
        "{} y/o F presents with confusion.",
        "At age {}, she still lives alone.",
        "Aged {}, admitted from nursing home.",
        "He is {} years old and ambulates with a walker.",
        "A {} year old man with hip fracture.",
        "Age: {}. Code status DNR.",
        "Woman, {} years of age, with delirium.",
    ],
    "NAME_context": [
        "Seen by Dr. {last} in clinic today.",
        "Patient: {first} {last}, 58 F.",
        "Discussed with Mrs. {last} at bedside.",
        "Electronically signed by {first} {last}, MD",
        "Referred by {first} {last} for evaluation.",
        "Attending: {first} {last}",
        "/s/ {first} {last}",
        "Mr. {first} {last} tolerated the procedure well.",
        "Name: {last}, {first}",
        "Case reviewed with {first} {last}, NP.",
        "Emergency contact: {first} {last} (daughter).",
        "Dictated by Dr. {first} {last}.",
    ],
    "NAME_bare": [
        "{first} {last} presented with chest pain.",
        "Spoke with {first} {last} about the plan.",
        "Called {first} {last} to review labs.",
        "Consent signed by {last}, {first} today.",
    ],
}


def canary_corpus(per_class: int = PER_CLASS, seed: int = SEED) -> list[tuple[str, str, int, int, str]]:
    """(text, class, start, end, subset) with the planted identifier at text[start:end]."""
    rng = random.Random(seed)
    out: list[tuple[str, str, int, int, str]] = []

    def plant(template: str, value: str, cls: str, subset: str = "") -> None:
        i = template.index("{}")
        text = template[:i] + value + template[i + 2 :]
        out.append((text, cls, i, i + len(value), subset))

    for _ in range(per_class):
        value, family = _date_value(rng)
        plant(rng.choice(TEMPLATES[f"DATE_{family}"]), value, "DATE", family)
        plant(rng.choice(TEMPLATES["PHONE"]), _phone(rng), "PHONE")
        plant(rng.choice(TEMPLATES["FAX"]), _phone(rng), "FAX")
        user = rng.choice(["jdoe", "mary.smith", "k_lee77", "patient.portal", "r.garcia+md"])
        host = rng.choice(["gmail.com", "example.org", "mail.hospital-north.net", "uni.edu"])
        plant(rng.choice(TEMPLATES["EMAIL"]), f"{user}{rng.randrange(100)}@{host}", "EMAIL")
        ssn = rng.choice(
            [
                f"{_digits(rng, 3)}-{_digits(rng, 2)}-{_digits(rng, 4)}",
                f"{_digits(rng, 3)} {_digits(rng, 2)} {_digits(rng, 4)}",
            ]
        )
        plant(rng.choice(TEMPLATES["SSN"]), ssn, "SSN")
        mrn = rng.choice(
            [
                _digits(rng, 7),
                _digits(rng, 8),
                "A" + _digits(rng, 7),
                _digits(rng, 3) + "-" + _digits(rng, 4),
                "MR" + _digits(rng, 6),
            ]
        )
        plant(rng.choice(TEMPLATES["MRN"]), mrn, "MRN")
        acct = rng.choice(
            [_digits(rng, 9), "AC" + _digits(rng, 8), _digits(rng, 4) + "-" + _digits(rng, 6), "XJH" + _digits(rng, 9)]
        )
        plant(rng.choice(TEMPLATES["ACCOUNT"]), acct, "ACCOUNT")
        lic = rng.choice(
            [
                "AB" + _digits(rng, 7),
                _digits(rng, 10),
                "D" + _digits(rng, 7),
                "RN" + _digits(rng, 6),
                "SN" + _digits(rng, 8),
            ]
        )
        plant(rng.choice(TEMPLATES["LICENSE"]), lic, "LICENSE")
        url = rng.choice(
            [
                f"https://portal.example-hospital.org/patient/{_digits(rng, 6)}",
                f"www.clinic{rng.randrange(99)}.com/results?id={_digits(rng, 5)}",
                f"http://10.0.{rng.randrange(255)}.{rng.randrange(255)}:8080/pacs/viewer",
                "https://www.mayoclinic.org/diseases-conditions/heart-failure",
            ]
        )
        plant(rng.choice(TEMPLATES["URL"]), url, "URL")
        ip = rng.choice(
            [
                ".".join(str(rng.randrange(256)) for _ in range(4)),
                f"192.168.{rng.randrange(256)}.{rng.randrange(1, 255)}",
                "2001:0db8:85a3:0000:0000:8a2e:0370:" + f"{rng.randrange(65536):04x}",
            ]
        )
        plant(rng.choice(TEMPLATES["IP"]), ip, "IP")
        zipc = rng.choice([f"{rng.randrange(1000, 99999):05d}", f"{rng.randrange(1000, 99999):05d}-{_digits(rng, 4)}"])
        plant(rng.choice(TEMPLATES["ZIP"]), zipc, "ZIP")
        plant(rng.choice(TEMPLATES["AGE"]), str(rng.randrange(90, 110)), "AGE")
        for subset in ("context", "bare"):
            synthetic = rng.random() < 0.6
            first, last = _name(rng, synthetic)
            template = rng.choice(TEMPLATES[f"NAME_{subset}"])
            # plant the full name so the span is the whole of it
            text = template.format(first=first, last=last)
            for m in re.finditer(re.escape(first) + "|" + re.escape(last), text):
                out.append((text, "NAME", m.start(), m.end(), subset + ("+synthetic" if synthetic else "+rare")))
    return out


def _covered(spans: list[PhiSpan], start: int, end: int, text: str, kind: str | None = None) -> bool:
    for i in range(start, end):
        if text[i].isspace():
            continue
        if not any(s.start <= i < s.end and (kind is None or s.kind == kind) for s in spans):
            return False
    return True


def recall_table(corpus=None) -> dict[str, dict[str, float]]:
    corpus = corpus if corpus is not None else canary_corpus()
    n: dict[str, int] = defaultdict(int)
    found: dict[str, int] = defaultdict(int)
    typed: dict[str, int] = defaultdict(int)
    cache: dict[str, list[PhiSpan]] = {}
    for text, cls, start, end, subset in corpus:
        spans = cache.setdefault(text, find_phi(text))
        keys = (
            [cls]
            + ([f"{cls}:{subset}"] if subset else [])
            + ([f"{cls}:{subset.split('+')[0]}"] if "+" in subset else [])
        )
        for key in keys:
            n[key] += 1
            found[key] += _covered(spans, start, end, text)
            typed[key] += _covered(spans, start, end, text, cls)
    return {k: {"n": n[k], "recall": found[k] / n[k], "typed": typed[k] / n[k]} for k in sorted(n)}


# Clinical sentences with no identifier at all: nothing in them may be scrubbed.
CLINICAL = [
    "Metoprolol 25 mg PO BID, aspirin 81 mg daily, atorvastatin 40 mg at bedtime.",
    "BP 120/80, HR 72, RR 16, T 98.6 F, SpO2 97% on room air.",
    "Diagnosis: acute myocardial infarction, ICD-10 I21.4; history of CABG in 2015.",
    "HbA1c 7.2%, fasting glucose 142 mg/dL, creatinine 1.1 mg/dL, eGFR 68.",
    "Platelets 250000, WBC 12,500, hemoglobin 10.2 g/dL, INR 1.3.",
    "CK 12345 U/L consistent with rhabdomyolysis; potassium 5.4 mmol/L.",
    "Take 1/2 tablet twice daily; increase to 3/4 tablet if tolerated.",
    "Grade 2/6 systolic murmur at the left sternal border.",
    "Gravida 3 para 2, 32 weeks gestation, fundal height 31 cm.",
    "Parkinson disease with resting tremor; started carbidopa-levodopa 25/100.",
    "Crohn's disease in remission on infliximab 5 mg/kg every 8 weeks.",
    "Down syndrome with atrioventricular septal defect repaired in 2001.",
    "Frank hematuria resolved after irrigation.",
    "Glasgow Coma Scale 15, pupils 3 mm and reactive.",
    "Insulin glargine 20 units at night, lispro 5 units with meals.",
    "The patient is a 67-year-old man with COPD, FEV1 45% predicted.",
    "Aged 65, she walks 2 miles a day.",
    "Smoked 40 pack-years, quit in 2010.",
    "Ejection fraction 35-40% on echocardiogram.",
    "Troponin 0.04 ng/mL, then 1.2 ng/mL at 6 hours.",
    "Hodgkin lymphoma stage IIA treated with ABVD x 6 cycles.",
    "Blood cultures 2/2 positive for MSSA.",
    "Pain 7/10 in the right lower quadrant, McBurney point tenderness.",
    "Lisinopril 10 mg daily; goal BP < 130/80.",
    "Sodium 140, chloride 102, bicarbonate 24, BUN 18.",
    "Vitamin D 25-OH level 18 ng/mL; started 50000 IU weekly.",
    "CD4 count 350 cells/uL, viral load undetectable.",
    "Alert and oriented x3, no focal deficits.",
    "Chest X-ray: no consolidation, no effusion.",
    "Patient reports 3 episodes of emesis in 24 hours.",
    "Visual acuity 20/40 OD and 20/25 OS.",
    "Admitted to ICU bed 12 for close monitoring.",
    "Type 2 diabetes mellitus with hyperglycemia, E11.65.",
    "Warfarin 5 mg Monday through Friday, 2.5 mg on weekends.",
    "Tdap given in 2019; influenza vaccine declined.",
    "May 5 mg of oxycodone be given for breakthrough pain?",
    "Patient: alert, cooperative, in no distress.",
    "Apgar scores 8 and 9 at 1 and 5 minutes.",
    "Temp 101.2, lactate 4.1, started sepsis bundle.",
    "Follow-up in 2 weeks with cardiology; repeat echo in 6 months.",
    "Addison disease on hydrocortisone 15 mg in the morning and 5 mg in the afternoon.",
    "The patient is 92 kg and 170 cm tall.",
    "Continue levothyroxine 100 mcg; TSH 2.3.",
    "Hepatitis B surface antigen negative; HCV antibody positive, genotype 1a.",
    "Bilateral knee osteoarthritis, Kellgren-Lawrence grade 3.",
    "Plan: CBC, BMP, lipid panel; return in 3 months.",
    "Foley 16 Fr placed, 400 mL clear urine.",
    "Fracture of unspecified part of neck of right femur, initial encounter for closed fracture.",
    "PSA 4.5 ng/mL; biopsy Gleason 3+4=7.",
    "He was started on amoxicillin 500 mg three times daily for 10 days.",
]


def test_recall_per_rule_class_is_at_least_95_percent():
    table = recall_table()
    low = {c: table[c] for c in RULE_CLASSES if table[c]["recall"] < 0.95}
    assert not low, f"recall below 0.95: {low}"
    assert all(table[c]["n"] >= PER_CLASS for c in RULE_CLASSES)


def test_planted_names_are_not_in_the_scrubbers_own_lists():
    """Recall is measured on names the bundled lists cannot supply (a listed name is found for the list's sake)."""
    listed = {n.lower() for n in FIRST_NAMES | SURNAMES}
    planted = {text[start:end] for text, cls, start, end, _ in canary_corpus() if cls == "NAME"}
    assert len(planted) > 100 and not {n for n in planted if n.lower() in listed}


def test_names_with_context_are_all_found():
    # Measured on this corpus: titled names 110/110; bare names 17/120 (0.14), the known gap, reported in
    # bench/README.md and not promised here.
    table = recall_table()
    assert table["NAME:context"]["recall"] == 1.0 and table["NAME:context"]["n"] == 110, table


def test_a_bare_pair_from_the_bundled_lists_is_found():
    # the one place the lists themselves are tested: a pair with no context at all
    assert scrub("Robert Johnson presented with chest pain.") == "[NAME] presented with chest pain."
    assert scrub("JOHN SMITH, 71 M") == "[NAME], 71 M"


def test_clinical_text_is_left_intact():
    changed = [(t, scrub(t)) for t in CLINICAL if scrub(t) != t]
    assert not changed, changed


def test_no_canary_survives_scrub():
    corpus = canary_corpus(per_class=10, seed=11)
    leaks = []
    for text, cls, start, end, subset in corpus:
        if cls == "NAME" and "bare" in subset:
            continue  # bare names are measured, not promised
        if text[start:end] in scrub(text):
            leaks.append((cls, text))
    assert not leaks, leaks


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("on 3/14 she fell", "on [DATE] she fell"),
        ("a 92-year-old man", "a [AGE]-year-old man"),
        ("a 45-year-old man", "a 45-year-old man"),
        ("Fax: 555-222-3333", "Fax: [FAX]"),
        ("Boston, MA 02114", "Boston, MA [ZIP]"),
        ("potassium 02114 is nonsense but not a ZIP", "potassium 02114 is nonsense but not a ZIP"),
        ("Dr. Smith", "Dr. [NAME]"),
        ("", ""),
    ],
)
def test_examples(text, expected):
    assert scrub(text) == expected


def test_placeholders_and_spans_are_consistent():
    assert set(PLACEHOLDERS) == set(RULE_CLASSES) | {"NAME", "ADDRESS"}  # addresses: test_deid_variants.py
    text = "Seen by Dr. Jones on 03/14/2023; call 555-123-4567."
    spans = find_phi(text)
    assert [s.kind for s in spans] == ["NAME", "DATE", "PHONE"]
    assert all(a.end <= b.start for a, b in zip(spans, spans[1:], strict=False))


# Formats outside the templates above, written as a stress set after the first rules (24/33 found then);
# measured and reported, held to a lower bar: the last two are known misses (an age with no age word, a
# name not in the lists with no context).
STRESS = [
    ("DOB:3/14/1931 per chart", "3/14/1931"),
    ("Seen 03/14/2023 10:22 by ED", "03/14/2023"),
    ("Injury Mar-14-2023 at work", "Mar-14-2023"),
    ("Surgery 14-Mar-2023 uneventful", "14-Mar-2023"),
    ("CT done 2023.03.14", "2023.03.14"),
    ("Next visit: Tuesday, April 4th", "April 4th"),
    ("Admitted 20230314 via ED", "20230314"),
    ("seen on the 14th of March, 2022", "14th of March, 2022"),
    ("Date: 3-14-23", "3-14-23"),
    ("ph: 555/123-4567", "555/123-4567"),
    ("call 5551234567 if worse", "5551234567"),
    ("Tel.+1-555-123-4567", "+1-555-123-4567"),
    ("ssn#123456789", "123456789"),
    ("MRN12345678 noted", "12345678"),
    ("mrn 00123456", "00123456"),
    ("Dr.Smith reviewed", "Smith"),
    ("JOHN SMITH, 71 M", "JOHN SMITH"),
    ("pt john smith", "john smith"),
    ("Pt. Maria Garcia is", "Maria Garcia"),
    ("Seen with her son, Robert.", "Robert"),
    ("Rx by Jane Doe NP", "Jane Doe"),
    ("95yo M", "95"),
    ("Email:JDOE@HOSP.ORG", "JDOE@HOSP.ORG"),
    ("http://bit.ly/abc", "http://bit.ly/abc"),
    ("Dallas, Texas 75201", "75201"),
    ("acct no 12345678", "12345678"),
    ("Lic#A12345", "A12345"),
    ("IP addr 10.1.2.3.", "10.1.2.3"),
    ("fax (555) 222-1111", "(555) 222-1111"),
    ("Signed: T. Quimby, MD", "T. Quimby"),
    ("Age 101", "101"),
    ("F, 93, lives alone", "93"),
    ("Meet Thaddeus Quimby at 3", "Thaddeus Quimby"),
]


def stress_recall() -> tuple[int, int]:
    return sum(value not in scrub(text) for text, value in STRESS), len(STRESS)


def test_stress_formats():
    found, n = stress_recall()
    assert found / n >= 0.9, [(t, scrub(t)) for t, v in STRESS if v in scrub(t)]


# 100,000-character notes built from the building blocks of the rules: long runs of digits and separators, of a
# phone's country code and digit groups, of labels followed by blanks, of month, ordinal and weekday words.
ADVERSARIAL = {
    "caps": "A" * 100_000,
    "digits": "1" * 100_000,
    "dots": "1." * 50_000,
    "colons": "1:" * 50_000,
    "spaces": " " * 100_000,
    "digit_space": "1 " * 50_000,
    "digit_dash": "1-" * 50_000,
    "parens": "(1) " * 25_000,
    "plus_ones": "+1 " * 33_000,
    "plus_digits": ("+1" + "1" * 40 + " ") * 2_300,
    "plus_digits_x": ("+1" + "1" * 30 + "x ") * 3_000,
    "double_zero": ("00" + "1" * 40 + " ") * 2_300,
    "intl_groups": "+44 " + "12 " * 33_000,
    "area_codes": "(0123) " * 14_000,
    "phone_word": "phone: " + "1" * 100_000,
    "zip_blanks": "zip" + " " * 100_000 + "x",
    "state_blanks": "MA" + " " * 100_000,
    "mrn_groups": "MRN " + "12 " * 33_000,
    "mrn_dashes": "MRN " + "1-" * 50_000,
    "names": "John " * 20_000,
    "last_first": "Smith, John " * 8_000,
    "titles": "Dr. " * 25_000,
    "emails": "a@" * 50_000,
    "streets": "1 Oak " * 16_000,
    "months": "May " * 25_000,
    "day_months": "14MAR" * 20_000,
    "ordinals": "twenty-first " * 7_500,
    "of_months": "the third of " * 7_500,
    "weekdays": "Monday, " * 12_000,
    "year_words": "nineteen " * 11_000,
}


@pytest.mark.parametrize("text", list(ADVERSARIAL.values()), ids=list(ADVERSARIAL))
def test_an_adversarial_note_scrubs_within_the_default_time_limit(text):
    """Issue 24: every rule runs in linear time, so no note of the maximum length built to make a rule backtrack
    (before: 12 s for "plus_digits", minutes for "zip_blanks") is refused by the reader's default time limit;
    an identifier after the junk is still found."""
    note = text + " Call 555-123-4567."
    spans = find_phi(note, time_limit=DEFAULT_DEID_SECONDS)
    assert PhiSpan(len(text) + 6, len(note) - 1, "PHONE") in spans


def test_a_note_over_its_time_limit_raises_without_quoting_it():
    note = "Seen by Dr. Quimby on 03/14/2023. " * 100
    with pytest.raises(ScrubTimeout, match="took longer than its time limit") as exc:
        scrub(note, time_limit=1e-9)
    assert "Quimby" not in str(exc.value) and scrub(note, time_limit=DEFAULT_DEID_SECONDS) == scrub(note)


if __name__ == "__main__":  # print the recall table
    tab = recall_table()
    print(f"{'class':<22}{'n':>5}{'recall':>9}{'typed':>8}")
    for key, row in tab.items():
        print(f"{key:<22}{row['n']:>5}{row['recall']:>9.3f}{row['typed']:>8.3f}")
    bad = [(t, scrub(t)) for t in CLINICAL if scrub(t) != t]
    print(f"clinical sentences altered: {len(bad)}/{len(CLINICAL)}")
    print("stress formats found: {}/{}".format(*stress_recall()))
    for t, s in bad:
        print("  ", t, "->", s)
