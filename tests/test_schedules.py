import pytest

from signticket.schedules import make_schedule


def test_step_schedule_drops_at_milestones():
    s = make_schedule("step", 0.1, 100)
    assert float(s(49)) == pytest.approx(0.1)
    assert float(s(50)) == pytest.approx(0.01)
    assert float(s(75)) == pytest.approx(0.001)


def test_cosine_with_warmup():
    s = make_schedule("cosine", 1.0, 110, warmup_steps=10)
    assert float(s(0)) == 0.0
    assert float(s(10)) == pytest.approx(1.0)
    assert float(s(110)) == pytest.approx(0.0, abs=1e-6)


def test_bad_schedule():
    with pytest.raises(ValueError, match="unknown schedule"):
        make_schedule("poly", 0.1, 10)
    with pytest.raises(ValueError, match="total_steps"):
        make_schedule("cosine", 0.1, 0)
