"""``osapi.job.setup.differences``: what counts as a difference between NATS and ``job.*``."""

from __future__ import annotations

import dataclasses

from nats.js import api

from osapi import config
from osapi.job.setup import differences, show_value, wanted_streams


def wanted(env: dict | None = None):
    return {w.name: w for w in wanted_streams(config.load(None, env or {}))}


def test_the_servers_own_spelling_of_the_same_settings_is_no_difference():
    jobs = wanted()["JOBS"]
    # what stream_info returns: enums as strings, limits as -1, an unset max_bytes filled in
    server = api.StreamConfig(name="JOBS", subjects=["jobs.>"], retention="limits", storage="file", num_replicas=1,
                              max_age=86400.0, max_msgs=10000, max_bytes=-1, discard="old", duplicate_window=120.0,
                              allow_direct=False)
    assert differences(jobs, server) == []


def test_each_differing_setting_is_named_with_both_values_and_its_key():
    jobs = wanted()["JOBS"]
    server = api.StreamConfig(name="JOBS", subjects=["jobs.>", "x.>"], retention="limits", storage="memory",
                              num_replicas=3, max_age=0, max_msgs=10000, max_bytes=-1, discard="new",
                              duplicate_window=120.0)
    found = [(d.setting, d.cluster, d.configured, d.key) for d in differences(jobs, server)]
    assert found == [
        ("subjects", ["jobs.>", "x.>"], ["jobs.>"], "job.stream_subjects"),
        ("storage", "memory", "file", "job.stream.storage"),
        ("replicas", 3, 1, "job.stream.replicas"),
        ("max_age", 0.0, 86400.0, "job.stream.max_age"),
        ("discard", "new", "old", "job.stream.discard"),
    ]


def test_bucket_ttl_is_reported_under_its_configuration_key():
    bucket = wanted({"OSAPI_JOB_KV_TTL": "1h"})["job-queue"]
    server = dataclasses.replace(bucket.config, max_age=86400.0)
    [diff] = differences(bucket, server)
    assert (diff.label, diff.setting, diff.key) == ("bucket job-queue", "max_age", "job.kv.ttl")
    assert (show_value("max_age", diff.cluster), show_value("max_age", diff.configured)) == ("1d", "1h")


def test_values_for_people():
    assert show_value("max_msgs", -1) == "unlimited" and show_value("max_age", 0.0) == "unlimited"
    assert show_value("subjects", ["a.>", "b.>"]) == "a.>,b.>" and show_value("exists", False) == "no"
    assert show_value("replicas", 3) == "3"
