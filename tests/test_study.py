"""Reading and checking study files: every error names the file and the line."""

import pytest

from invivo.study import StudyFileError, load_study

GOOD = """[study]
name = "t"
root = "."

[[subject]]
id = "m01"
group = "A"

[[injection]]
subject = "m01"
isotope = "89Zr"
activity_mbq = 0.5
time = 2026-03-02T09:30:00

[[scan]]
subject = "m01"
session = "d1"
kind = "pet"
path = "pet"

[[scan]]
subject = "m01"
session = "d1"
kind = "mr"
path = "mr"

[[roi]]
name = "tumour"
sphere = [1.0, 2.0, 3.0]
radius_mm = 2.0

[[roi]]
name = "hot"
threshold = 50
within = "tumour"
"""


def _write(tmp_path, text):
    (tmp_path / "pet").mkdir(exist_ok=True)
    (tmp_path / "mr").mkdir(exist_ok=True)
    p = tmp_path / "study.toml"
    p.write_text(text)
    return p


def test_good_study(tmp_path):
    st = load_study(_write(tmp_path, GOOD))
    assert list(st.subjects) == ["m01"] and st.sessions("m01") == ["d1"]
    assert st.injections["m01"].activity_bq == 0.5e6
    assert [r.source for r in st.rois] == ["sphere", "threshold"]
    assert st.registration["transform"] == "rigid" and st.uptake["units"] == ["idg", "suvbw"]


@pytest.mark.parametrize("old,new,line,words", [
    ('kind = "pet"', 'kind = "pat"', 18, "kind: must be one of"),
    ('group = "A"', 'group = "A"\ncolour = "red"', 8, "unknown key"),
    ('path = "mr"', 'path = "nowhere"', 25, "does not exist"),
    ('[[injection]]\nsubject = "m01"', '[[injection]]\nsubject = "m02"', 10, "not defined"),
    ('activity_mbq = 0.5', 'activity_mbq = -1', 12, "positive"),
    ('radius_mm = 2.0', '', 27, "missing key 'radius_mm'"),
    ('within = "tumour"', 'within = "liver"', 35, "ROI 'liver' is not defined"),
    ('threshold = 50', 'threshold = 150', 34, "(0, 100]"),
    ('[study]', '[stdy]', 1, "unknown table"),
    ('isotope = "89Zr"', 'isotope = "Xx99"', 11, "isotope"),
])
def test_errors_point_to_the_line(tmp_path, old, new, line, words):
    assert old in GOOD
    p = _write(tmp_path, GOOD.replace(old, new, 1))
    with pytest.raises(StudyFileError) as e:
        load_study(p)
    msg = str(e.value)
    assert msg.startswith(f"{p}:{line}:"), msg
    assert words in msg
    assert "\n" not in msg


def test_not_toml_and_missing_file(tmp_path):
    p = _write(tmp_path, GOOD + "\n[[scan]\n")
    with pytest.raises(StudyFileError, match="not valid TOML.*line"):
        load_study(p)
    with pytest.raises(StudyFileError, match="cannot read"):
        load_study(tmp_path / "none.toml")
