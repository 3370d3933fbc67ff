"""Instructor tier of problem 12, the lab: the numbers in answers/lab.json against the reference's own runs
(the answer key's docs/answer-key/answers/lab.json, saved as fixtures/lab.json): the same shipped base models
and seeds, so a correct implementation gives the base numbers up to float noise, and tuned numbers near the
reference's. The written answers are read by the instructor (the answer key lists what a good answer observes)."""
import json

import instructor_util
import test_lab as lab_answers  # (the public test's reading of answers/lab.json)

BASE_TOLERANCE = 0.04    # the base models are shipped: only float noise and a student's own numerics differ
TUNED_TOLERANCE = 0.06   # training on slightly different samples moves the tuned numbers a little more
DIRECTION = {"decision": +1, "mirror": -1}   # the careful share moves towards the opener the base model prefers


def make():
    return json.loads((instructor_util.CODE / "docs" / "answer-key" / "answers" / "lab.json").read_text())


def test_base_numbers_are_the_reference_runs():
    want, got = instructor_util.load("lab"), lab_answers.numbers()
    for world in DIRECTION:
        for key in ("careful_share", "sampled_accuracy"):
            g, w = got[world]["base"][key], want[world]["base"][key]
            assert abs(g - w) <= BASE_TOLERANCE, \
                f"{world}: base {key} {g:.3f}, the reference's run gives {w:.3f} (tolerance {BASE_TOLERANCE})"


def test_tuned_numbers_are_near_the_reference_runs_and_move_the_right_way():
    want, got = instructor_util.load("lab"), lab_answers.numbers()
    for world, sign in DIRECTION.items():
        for key in ("careful_share", "sampled_accuracy"):
            g, w = got[world]["tuned"][key], want[world]["tuned"][key]
            assert abs(g - w) <= TUNED_TOLERANCE, \
                f"{world}: tuned {key} {g:.3f}, the reference's run gives {w:.3f} (tolerance {TUNED_TOLERANCE})"
        moved = got[world]["tuned"]["careful_share"] - got[world]["base"]["careful_share"]
        assert sign * moved > -0.02, f"{world}: the careful share moved {moved:+.3f}; the reference's moved " \
            f"{want[world]['tuned']['careful_share'] - want[world]['base']['careful_share']:+.3f}"
