"""The soak test's helpers (benchmarks/soak.py) on small inputs: the growing days, the bad
model's item mapping, per-phase figures, the metrics it keeps and its Markdown tables. The soak
itself runs for minutes (`make soak`) and is not run here."""

from __future__ import annotations

from benchmarks.soak import DAYS, markdown, parse_metrics, phases, write_days, write_permuted


def _events(path):
    return [tuple(line.split(",")) for line in path.read_text().splitlines()[1:]]


def test_each_day_keeps_the_last_and_adds_events_users_and_items(tmp_path):
    days = write_days(tmp_path)
    assert sorted(days) == sorted(DAYS)
    before: set = set()
    for day in sorted(days):
        events = _events(days[day])
        assert set(events) >= before and len(events) > len(before)
        users, items = {e[0] for e in events}, {e[1] for e in events}
        assert len(users) == DAYS[day][0] and len(items) == DAYS[day][1]
        if before:
            assert len(items - {e[1] for e in before}) >= 20
        timestamps = [int(e[2]) for e in events if e not in before]
        assert min(timestamps) >= day * 1_000_000
        before = set(events)
    assert write_days(tmp_path / "again")[4].read_bytes() == days[4].read_bytes()


def test_the_bad_model_data_maps_every_item_to_another_one(tmp_path):
    days = write_days(tmp_path)
    mapping = write_permuted(days[2], tmp_path / "bad.csv")
    events, bad = _events(days[2]), _events(tmp_path / "bad.csv")
    assert sorted(mapping) == sorted(set(mapping.values())) == sorted({e[1] for e in events})
    assert all(a != b for a, b in mapping.items())
    assert bad == [(u, mapping[i], t) for u, i, t in events]


def test_phases_split_requests_at_the_events():
    records = [
        (0.5, 0.010, "OK", "soak/1", "SOURCE_MODEL", False),
        (1.5, 0.020, "OK", "soak/1", "SOURCE_REQUEST_HISTORY", True),
        (1.6, 2.000, "DEADLINE_EXCEEDED", "", "", False),
        (2.5, 0.030, "OK", "soak/2", "SOURCE_MODEL", False),
    ]
    got = phases(records, [(0.0, "a"), (1.0, "b"), (2.0, "c")], 3.0)
    assert [(p["phase"], p["requests"], p["failed"], p["degraded"]) for p in got] == [
        ("a", 1, 0, 0),
        ("b", 2, 1, 1),
        ("c", 1, 0, 0),
    ]
    assert got[1]["degraded_s"] == [1.5, 1.5] and got[1]["latency_ms"]["p50"] == 20.0
    assert got[2]["versions"] == {"soak/2": 1}


def test_metrics_keep_degradation_failures_and_rollouts_only():
    text = "\n".join(
        [
            "# HELP recsys_degraded_responses_total answers from a fallback",
            'recsys_degraded_responses_total{rpc="Recommend",source="request_history"} 12.0',
            'recsys_failures_total{cause="item_refresh"} 1.0',
            "recsys_rollout_overlap 0.25",
            'recsys_grpc_requests_total{method="Recommend",code="OK"} 99.0',
        ]
    )
    assert parse_metrics(text) == {
        'recsys_degraded_responses_total{rpc="Recommend",source="request_history"}': 12.0,
        'recsys_failures_total{cause="item_refresh"}': 1.0,
        "recsys_rollout_overlap": 0.25,
    }


def test_markdown_has_one_row_per_phase_cycle_and_process():
    report = {
        "phases": phases([(0.5, 0.01, "OK", "soak/1", "SOURCE_MODEL", False)], [(0.0, "day 1")], 1.0),
        "cycles": [
            {
                "cycle": "2: bad model",
                "version": 3,
                "expected": "rolled_back",
                "state": "rolled_back",
                "rollout": {"reason": "top-10 overlap 0.01 < 0.1", "overlap": 0.01},
                "answers": 23,
                "ended_s_after_publish": 2.1,
                "ended_s_after_first_answer": 0.4,
            }
        ],
        "rss": {"inference": {"after_warmup_mib": 90.0, "end_mib": 91.0, "max_mib": 92.0, "growth_pct": 1.1}},
    }
    text = markdown(report)
    assert "| day 1 | 0–1 | 1 | 0 | 0 |" in text
    assert "**rolled_back** | top-10 overlap 0.01 < 0.1 | 0.01 | 23 | 2.1 / 0.4 |" in text
    assert "| inference | 90.0 | 91.0 | 92.0 | 1.1 % |" in text
