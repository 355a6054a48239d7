"""The CPU speed choice on its own: the fastest combination wins by the timing rule, a resume on
the same CPU times nothing, a resume on another CPU times again."""
import time

from mtan.timing import cpu_identity
from mtan.train import cpu_speed
from mtan.train.cpu_speed import Speed


def _step_costing(seconds: dict, calls: list):
    def step(speed: Speed):
        calls.append(speed)
        time.sleep(seconds[(speed.amp, speed.layout)])
    return step


def test_the_fastest_of_the_four_is_chosen_and_logged():
    calls, lines = [], []
    cost = {("off", "off"): 0.03, ("bf16", "off"): 0.02, ("off", "on"): 0.03, ("bf16", "on"): 0.005}
    chosen = cpu_speed.choose("auto", "auto", {}, _step_costing(cost, calls), lines.append)
    assert chosen == Speed("bf16", "on")
    assert {(s.amp, s.layout) for s in calls} == set(cost)
    assert lines and "amp auto: bf16; channels-last auto: on" in lines[-1]
    assert "bf16 channels-last" in lines[-1] and "off channels-last" in lines[-1]


def test_float32_nchw_is_kept_unless_another_is_clearly_faster():
    cost = {("off", "off"): 0.05, ("bf16", "off"): 0.048, ("off", "on"): 0.048, ("bf16", "on"): 0.048}
    assert cpu_speed.choose("auto", "auto", {}, _step_costing(cost, []), lambda _: None) == Speed("off", "off")


def test_only_the_open_choice_is_timed():
    calls = []
    cost = {("off", "off"): 0.01, ("off", "on"): 0.0}
    assert cpu_speed.choose("off", "auto", {}, _step_costing(cost, calls), lambda _: None) == Speed("off", "on")
    assert {s.amp for s in calls} == {"off"}
    calls.clear()
    assert cpu_speed.choose("bf16", "off", {}, _step_costing(cost, calls), lambda _: None) == Speed("bf16", "off")
    assert calls == []


def test_a_resume_keeps_the_record_on_the_same_cpu_and_times_again_on_another():
    calls, lines = [], []
    cost = {("off", "off"): 0.02, ("bf16", "off"): 0.02, ("off", "on"): 0.0, ("bf16", "on"): 0.02}
    record = {"amp": "bf16", "channels_last": "on", "cpu": cpu_identity()}
    assert cpu_speed.choose("auto", "auto", record, _step_costing(cost, calls), lines.append) == Speed("bf16", "on")
    assert calls == [] and any("as the run being resumed chose" in line for line in lines)
    lines.clear()
    elsewhere = dict(record, cpu="another CPU")
    assert cpu_speed.choose("auto", "auto", elsewhere, _step_costing(cost, calls), lines.append) == Speed("off", "on")
    assert calls and "resuming on another CPU" in lines[0]
