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


def test_torch_cosine_is_a_schedule_every_run_config_may_name():
    """AWS's ImageNet final runs use it: the config check must accept it (it once rejected the
    paper config before any training) and make_schedule must build the official curve."""
    from signticket.schedules import SCHEDULES, make_schedule, torch_cosine

    assert "torch_cosine" in SCHEDULES
    built = make_schedule("torch_cosine", 0.1, 10 * 7, steps_per_epoch=7, eta_min_ratio=1e-3)
    direct = torch_cosine(0.1, 10, 7, 1e-3)
    for step in (0, 6, 7, 34, 69, 70):
        assert abs(float(built(step)) - float(direct(step))) < 1e-9
    assert float(built(69)) > 0.1 * 1e-3 and abs(float(built(0)) - 0.1) < 1e-6
