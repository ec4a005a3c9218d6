"""`fastbark batch`: items to files, a manifest, resumability, bad items recorded, and the same on Ray."""

import json
import os

import pytest
import soundfile as sf

from fastbark import batch as batch_module
from fastbark.cli import main

FAST = {"max_semantic_tokens": 6}
GOOD = [
    {"id": "a1", "text": "the dog is cute", "seed": 1, **FAST},
    {"id": "a2", "text": "Hello world [laughs]", "seed": 2, "voice": "announcer", **FAST},
    {"id": "a3", "text": "café naïve", "seed": 3, "format": "flac", **FAST},
    {"id": "a4", "text": "I a the", "seed": 4, "voice": "announcer", **FAST},
]


def write_jobs(path, items, extra_lines=()):
    path.write_text("\n".join([json.dumps(i) for i in items] + list(extra_lines)) + "\n", encoding="utf-8")
    return path


def manifest(out):
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def run(hub_dir, jobs, out, *extra):
    return main(["batch", str(jobs), "--out", str(out), "--model", str(hub_dir), "-q", *extra])


def test_batch_writes_files_and_a_manifest(hub_dir, tmp_path, capsys):
    bad = ['{"id": "b1", "text": ', '{"id": "../evil", "text": "hi"}', '{"id": "a1", "text": "again"}',
           '{"id": "b2", "text": "hi", "voice": "nobody"}', '{"id": "b3", "text": "hi", "top_k": -1}',
           '{"id": "b4", "text": "hi", "colour": "red"}', '[1, 2]']
    jobs = write_jobs(tmp_path / "jobs.jsonl", GOOD, bad)
    assert run(hub_dir, jobs, tmp_path / "out") == 1  # some items failed
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["a1.wav", "a2.wav", "a3.flac", "a4.wav", "manifest.jsonl"]
    records = manifest(out)
    ok = {r["id"]: r for r in records if r["status"] == "ok"}
    assert ok.keys() == {"a1", "a2", "a3", "a4"}
    assert ok["a2"]["voice"] == "announcer" and ok["a2"]["seed"] == 2 and ok["a2"]["segments"][0]["text"]
    assert sf.info(out / "a1.wav").duration == pytest.approx(ok["a1"]["duration_s"])
    errors = [r for r in records if r["status"] == "error"]
    assert len(errors) == 7
    text = " ".join(r["error"] for r in errors)
    for expected in ("not a JSON object", "not a safe file name", "appears more than once", "unknown voice 'nobody'",
                     "top_k", "unknown key(s) colour", "must be a JSON object"):
        assert expected in text, expected
    assert "7 failed" in capsys.readouterr().err


def test_the_same_item_alone_or_batched_gives_the_same_file(hub_dir, tmp_path):
    assert run(hub_dir, write_jobs(tmp_path / "all.jsonl", GOOD), tmp_path / "all", "--batch-size", "4") == 0
    assert run(hub_dir, write_jobs(tmp_path / "one.jsonl", GOOD[3:]), tmp_path / "one") == 0
    assert (tmp_path / "all" / "a4.wav").read_bytes() == (tmp_path / "one" / "a4.wav").read_bytes()


def test_resume_after_an_interruption(hub_dir, tmp_path, monkeypatch):
    jobs, out = write_jobs(tmp_path / "jobs.jsonl", GOOD), tmp_path / "out"
    real, calls = batch_module.run_batch, []

    def interrupted(tts, batch, out_dir):
        calls.append([i.id for i in batch])
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C in the middle of the second batch
        return real(tts, batch, out_dir)
    monkeypatch.setattr(batch_module, "run_batch", interrupted)
    assert run(hub_dir, jobs, out, "--batch-size", "1") == 130
    first = calls[0][0]
    assert sorted(p.name for p in out.iterdir()) == sorted([f"{first}.{'flac' if first == 'a3' else 'wav'}",
                                                            "manifest.jsonl"])  # no partial file
    stamp = os.stat(next(out.glob(f"{first}.*"))).st_mtime_ns
    monkeypatch.setattr(batch_module, "run_batch", real)
    calls.clear()
    assert run(hub_dir, jobs, out) == 0
    assert os.stat(next(out.glob(f"{first}.*"))).st_mtime_ns == stamp  # not redone
    assert {r["id"] for r in manifest(out) if r["status"] == "ok"} == {"a1", "a2", "a3", "a4"}
    assert len([r for r in manifest(out) if r["status"] == "ok"]) == 4  # nothing done twice
    assert run(hub_dir, jobs, out) == 0  # a third run: nothing to do
    assert len(manifest(out)) == 4


def test_csv_jobs(hub_dir, tmp_path):
    (tmp_path / "jobs.csv").write_text("id,text,seed,max_semantic_tokens,allow_early_stop\n"
                                       "c1,the dog,5,6,true\nc2,\"Hello, world\",6,6,false\n", encoding="utf-8")
    assert run(hub_dir, tmp_path / "jobs.csv", tmp_path / "out") == 0
    assert {r["id"] for r in manifest(tmp_path / "out")} == {"c1", "c2"}


def test_bad_jobs_files(hub_dir, tmp_path, capsys):
    assert run(hub_dir, tmp_path / "missing.jsonl", tmp_path / "out") == 2
    (tmp_path / "jobs.txt").write_text("x")
    assert run(hub_dir, tmp_path / "jobs.txt", tmp_path / "out") == 2
    (tmp_path / "file").write_text("x")
    assert run(hub_dir, write_jobs(tmp_path / "j.jsonl", GOOD), tmp_path / "file") == 2
    err = capsys.readouterr().err
    assert "cannot read the jobs file" in err and "JSON Lines" in err and "is a file" in err


@pytest.mark.filterwarnings("ignore")
def test_ray_run_gives_the_local_files(hub_dir, tmp_path, capfd):
    pytest.importorskip("ray")
    # a bad seed is refused before Ray; a text with nothing to speak fails on its actor, alone
    jobs = write_jobs(tmp_path / "jobs.jsonl", GOOD + [{**GOOD[0], "id": "bad", "seed": -3},
                                                       {**GOOD[0], "id": "zw", "text": "\u200b"}])
    assert run(hub_dir, jobs, tmp_path / "local", "--threads", "1") == 1
    capfd.readouterr()
    assert run(hub_dir, jobs, tmp_path / "ray", "--ray", "--actors", "2", "--cpus-per-actor", "1",
               "--batch-size", "2") == 1
    captured = capfd.readouterr()
    assert "Running" not in captured.err + captured.out and "Started" not in captured.err  # -q: Ray quiet too
    for name in ("a1.wav", "a2.wav", "a3.flac", "a4.wav"):
        assert (tmp_path / "ray" / name).read_bytes() == (tmp_path / "local" / name).read_bytes(), name
    records = by_name(manifest(tmp_path / "ray"))
    assert {i for i, r in records.items() if r["status"] == "ok"} == {"a1", "a2", "a3", "a4"} and len(records) == 6
    assert "got -3" in records["bad"]["error"] and "nothing to speak" in records["zw"]["error"]
    assert run(hub_dir, jobs, tmp_path / "ray", "--ray") == 1  # resumed on Ray: only the failed one is retried
    assert len(manifest(tmp_path / "ray")) == 6  # and it failed the same way: nothing new to record


def test_python_api(tts, tmp_path):
    records = list(batch_module.synthesize(tts, [*GOOD[:2], {"id": "x/y", "text": "hi"}], tmp_path / "out"))
    assert [r["status"] for r in records] == ["error", "ok", "ok"]  # refused at once, then the batch
    assert (tmp_path / "out" / "a1.wav").is_file()
    assert list(batch_module.synthesize(tts, GOOD[:2], tmp_path / "out")) == []  # done already


# ------------------------------------------------------------------ one bad item never sinks another (issue 23)
# These tests fail on the code before issue 23: a bad seed failed its whole batch with another item's value.


def by_name(records):
    return {r.get("id") or r.get("given_id"): r for r in records}


def test_a_bad_seed_fails_its_own_item_only_with_its_own_value(hub_dir, tmp_path):
    seeds = {"s1": 1, "s2": -3, "s3": 2, "s4": 3, "s5": 1e30, "s6": True}
    items = [{"id": i, "text": "the dog is cute", "seed": seed, **FAST} for i, seed in seeds.items()]
    out = tmp_path / "out"
    assert run(hub_dir, write_jobs(tmp_path / "jobs.jsonl", items), out, "--batch-size", "8") == 1
    records = by_name(manifest(out))
    assert {i for i, r in records.items() if r["status"] == "ok"} == {"s1", "s3", "s4"}
    for name, shown in (("s2", "-3"), ("s5", "1e+30"), ("s6", "True")):
        assert records[name]["status"] == "error" and records[name]["error"].endswith(f"got {shown}"), records[name]
    alone = tmp_path / "alone"
    assert run(hub_dir, write_jobs(tmp_path / "one.jsonl", items[3:4]), alone) == 0
    assert (out / "s4.wav").read_bytes() == (alone / "s4.wav").read_bytes()  # its neighbours changed nothing


def test_csv_seeds_are_checked_item_by_item(hub_dir, tmp_path):
    (tmp_path / "jobs.csv").write_text("id,text,seed,max_semantic_tokens\nc1,the dog,1,6\nc2,the dog,-3,6\n"
                                       "c3,the dog,1e30,6\nc4,the dog,true,6\nc5,the dog,4,6\n", encoding="utf-8")
    assert run(hub_dir, tmp_path / "jobs.csv", tmp_path / "out") == 1
    records = by_name(manifest(tmp_path / "out"))
    assert {i for i, r in records.items() if r["status"] == "ok"} == {"c1", "c5"}
    assert "got -3" in records["c2"]["error"] and "got 1e+30" in records["c3"]["error"]
    assert "got True" in records["c4"]["error"]


def test_an_item_that_fails_at_run_time_fails_alone(hub_dir, tmp_path):
    # zero-width text passes the item check but has nothing to speak: its batch companions still succeed
    items = [GOOD[0], {"id": "zw", "text": "\u200b\u200b", "seed": 9, **FAST}, {**GOOD[0], "id": "a5", "seed": 5}]
    out = tmp_path / "out"
    assert run(hub_dir, write_jobs(tmp_path / "jobs.jsonl", items), out, "--batch-size", "3") == 1
    records = by_name(manifest(out))
    assert records["a1"]["status"] == records["a5"]["status"] == "ok"
    assert records["zw"]["status"] == "error" and "nothing to speak" in records["zw"]["error"]


def test_ids_must_be_strings_and_reruns_do_not_repeat_refusals(hub_dir, tmp_path):
    jobs = write_jobs(tmp_path / "jobs.jsonl", GOOD[:1], ['{"id": 5, "text": "hi"}', '{"id": "b", "text": "hi", '
                                                          '"seed": -1}', "not json"])
    out = tmp_path / "out"
    assert run(hub_dir, jobs, out) == 1
    first = manifest(out)
    refused = [r for r in first if r["status"] == "error"]
    assert len(refused) == 3 and "id must be a string (a file name), got int 5" in refused[0]["error"]
    assert run(hub_dir, jobs, out) == 1  # the same refusals again: the manifest already holds them
    assert manifest(out) == first
    jobs.write_text(jobs.read_text().replace('"seed": -1', '"seed": 1'))
    assert run(hub_dir, jobs, out) == 1  # fixed: b runs, the other two are still refused, once
    assert len(manifest(out)) == len(first) + 1 and by_name(manifest(out))["b"]["status"] == "ok"


def test_an_output_folder_that_cannot_be_written_is_refused_before_loading(hub_dir, tmp_path, capsys, monkeypatch):
    import fastbark.engine
    monkeypatch.setattr(fastbark.engine.Bark, "from_pretrained", lambda *a, **k: pytest.fail("loaded a model"))
    jobs = write_jobs(tmp_path / "jobs.jsonl", GOOD[:1])
    if not os.access("/proc", os.W_OK):
        pytest.skip("needs /proc where access() allows root to write but where no file can be made")
    for out in ("/proc/fastbark-out", "/proc"):  # cannot be made / no file can be made in it
        assert run(hub_dir, jobs, out) == 2
        err = capsys.readouterr().err
        assert err.startswith("fastbark: error: cannot") and "Traceback" not in err and len(err.splitlines()) == 1
