"""A modest, hand-written list of common US first names and surnames for the name recogniser.

Source: the most frequent given names (US Social Security Administration birth-name tables, all decades) and
the most frequent surnames (US Census 2010 surname table), written out by hand from those public-domain
tables; not a download. The lists are deliberately small (about 200 + 200): they only add recall where no
title or label context ("Dr.", "Patient:", "seen by", signatures) announces a name, and they are used only in
"Firstname Lastname" / "Lastname, Firstname" pairs, never for a lone capitalised word.

Given names that are also common English or clinical words (May, June, Grace, Hope, Will, Mark, Frank, ...)
are left out of FIRST_NAMES on purpose: "Frank Hematuria" in a heading must not become "[NAME]".
"""

from __future__ import annotations

FIRST_NAMES = frozenset(
    """
    James John Robert Michael William David Richard Joseph Thomas Charles Christopher Daniel Matthew Anthony
    Donald Steven Paul Andrew Joshua Kenneth Kevin Brian George Edward Ronald Timothy Jason Jeffrey Ryan
    Jacob Gary Nicholas Eric Jonathan Stephen Larry Justin Scott Brandon Benjamin Samuel Gregory Alexander
    Patrick Jack Dennis Jerry Tyler Aaron Jose Adam Henry Nathan Douglas Zachary Peter Kyle Walter Ethan
    Jeremy Harold Keith Christian Roger Noah Gerald Carl Terry Sean Austin Arthur Lawrence Jesse Dylan Bryan
    Joe Jordan Billy Bruce Albert Willie Gabriel Logan Alan Juan Wayne Roy Ralph Randy Eugene Vincent Russell
    Elijah Louis Bobby Philip Johnny Howard Carlos Luis Miguel Ahmed Mohammed Wei Hiroshi Raj Ivan
    Mary Patricia Jennifer Linda Elizabeth Barbara Susan Jessica Sarah Karen Lisa Nancy Betty Margaret Sandra
    Ashley Kimberly Emily Donna Michelle Dorothy Carol Amanda Melissa Deborah Stephanie Rebecca Sharon Laura
    Cynthia Kathleen Amy Angela Shirley Anna Brenda Pamela Emma Nicole Helen Samantha Katherine Christine
    Debra Rachel Carolyn Janet Catherine Maria Heather Diane Julie Joyce Victoria Kelly Christina Lauren
    Joan Evelyn Olivia Judith Megan Cheryl Martha Andrea Hannah Jacqueline Ann Gloria Jean Kathryn Alice
    Teresa Sara Janice Doris Madison Julia Judy Abigail Marie Denise Beverly Danielle Theresa Sophia Marilyn
    Diana Brittany Natalie Isabella Charlotte Kayla Alexis Lori Priya Mei Fatima Aisha Yuki Ana Rosa Elena
    Sofia Chloe Ava Mia Harper Ella Lucy Zoe Nora Claire
    """.split()
)

SURNAMES = frozenset(
    """
    Smith Johnson Williams Brown Jones Garcia Miller Davis Rodriguez Martinez Hernandez Lopez Gonzalez Wilson
    Anderson Thomas Taylor Moore Jackson Martin Lee Perez Thompson White Harris Sanchez Clark Ramirez Lewis
    Robinson Walker Young Allen King Wright Scott Torres Nguyen Hill Flores Green Adams Nelson Baker Hall
    Rivera Campbell Mitchell Carter Roberts Gomez Phillips Evans Turner Diaz Parker Cruz Edwards Collins Reyes
    Stewart Morris Morales Murphy Cook Rogers Gutierrez Ortiz Morgan Cooper Peterson Bailey Reed Kelly Howard
    Ramos Kim Cox Ward Richardson Watson Brooks Chavez Wood James Bennett Gray Mendoza Ruiz Hughes Price
    Alvarez Castillo Sanders Patel Myers Long Ross Foster Jimenez Powell Jenkins Perry Russell Sullivan Bell
    Coleman Butler Henderson Barnes Gonzales Fisher Vasquez Simmons Romero Jordan Patterson Alexander Hamilton
    Graham Reynolds Griffin Wallace Moreno West Cole Hayes Bryant Herrera Gibson Ellis Tran Medina Aguilar
    Stevens Murray Ford Castro Marshall Owens Harrison Fernandez McDonald Woods Washington Kennedy Wells
    Vargas Henry Chen Freeman Webb Tucker Guzman Burns Crawford Olson Simpson Porter Hunter Gordon Mendez
    Silva Shaw Snyder Mason Dixon Munoz Hunt Hicks Holmes Palmer Wagner Black Robertson Boyd Rose Stone
    Salazar Fox Warren Mills Meyer Rice Schmidt Garza Daniels Ferguson Nichols Stephens Soto Weaver Ryan
    Gardner Payne Grant Dunn Kelley Spencer Hawkins Arnold Pierce Vazquez Hansen Peters Santos Hart Bradley
    Knight Elliott Cunningham Duncan Armstrong Hudson Carroll Lane Riley Andrews Alvarado Ray Delgado Berry
    Perkins Hoffman Johnston Matthews Pena Richards Contreras Willis Carpenter Lawrence Sandoval Wang Li
    Zhang Liu Singh Kumar Shah Khan Ali Cohen Murphy OBrien O'Brien Kowalski Novak Muller Rossi Tanaka Sato
    """.split()
)
