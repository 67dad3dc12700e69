"""``treeclip download`` against a local HTTP server on 127.0.0.1 (generated images, 404s, 500s then
success, 429 with Retry-After, slow, hanging and truncated responses, HTML served as 200, redirect loops),
its resume after SIGKILL, and ``treeclip build --source download:DIR`` end to end.

Catalog rows copy real taxa, EOL content/page ids and GBIF column layouts (realdata-samples: BioCLIP's
Rare Species metadata; GBIF's Darwin Core Archive headers); the URLs point at the local server."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("httpx")
pytest.importorskip("pyrate_limiter")
pytest.importorskip("tenacity")

from treeclip.cli import main  # noqa: E402
from treeclip.data.download.journal import STATUS_COLUMNS, repair  # noqa: E402

RARE = [  # bioclip rare_species metadata.csv rows: content id, page id, lineage, common name
    ("12853737", "449393", "Animalia,Mollusca,Bivalvia,Unionida,Unionidae,Cyclonaias,tuberculata", "purple wartyback"),
    ("21411803", "449393", "Animalia,Mollusca,Bivalvia,Unionida,Unionidae,Cyclonaias,tuberculata", "purple wartyback"),
]
RANKS = "kingdom,phylum,class,order,family,genus,species"


def jpeg(name: str, size: int = 24) -> bytes:
    """A small JPEG whose colour depends on `name` (so every URL has distinct bytes)."""
    digest = hashlib.sha256(name.encode()).digest()
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), tuple(digest[:3])).save(buffer, format="JPEG")
    return buffer.getvalue()


class Handler(BaseHTTPRequestHandler):
    """Behaviour by the first path segment; `hits` counts requests per path."""

    hits: Counter[str] = Counter()
    times: list[float] = []
    lock = threading.Lock()

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def _send(self, status: int, body: bytes, content_type: str = "image/jpeg", length: int | None = None,
              headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        with self.lock:
            self.hits[self.path] += 1
            self.times.append(time.monotonic())
            count = self.hits[self.path]
        kind = self.path.split("/")[1]
        image = jpeg(self.path)
        if kind == "img":
            self._send(200, image)
        elif kind == "photo":  # a larger noisy photo, so that a build takes long enough to be killed
            buffer = io.BytesIO()
            Image.effect_noise((320, 240), 60).convert("RGB").save(buffer, format="JPEG", quality=90)
            self._send(200, buffer.getvalue())
        elif kind == "slowimg":
            time.sleep(0.05)
            self._send(200, image)
        elif kind == "png":  # a real PNG served with a wrong content type: an image all the same
            buffer = io.BytesIO()
            Image.new("RGB", (8, 8), "green").save(buffer, format="PNG")
            self._send(200, buffer.getvalue(), "application/octet-stream")
        elif kind == "missing":
            self._send(404, b"<html>not found</html>", "text/html")
        elif kind == "flaky" and count == 1:
            self._send(500, b"oops", "text/plain")
        elif kind == "busy" and count == 1:
            self._send(429, b"slow down", "text/plain", headers={"Retry-After": "1"})
        elif kind in ("flaky", "busy"):
            self._send(200, image)
        elif kind == "broken":
            self._send(503, b"down", "text/plain")
        elif kind == "hang":
            time.sleep(1.5)
            self._send(200, image)
        elif kind == "truncated":
            self._send(200, image[: len(image) // 2], length=len(image))
            self.close_connection = True
        elif kind == "html":
            self._send(200, b"<!DOCTYPE html><html><body>Error: image unavailable</body></html>", "image/jpeg")
        elif kind == "loop":
            self.send_response(302)
            self.send_header("Location", self.path)
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif kind == "elsewhere":  # a redirect out of http(s): never followed
            self.send_response(302)
            self.send_header("Location", "file:///etc/passwd")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif kind == "big":
            self._send(200, image + b"\0" * 300_000)
        else:
            self._send(404, b"", "text/plain")


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # clients that time out or give up close the connection mid-response: expected here


@pytest.fixture
def server() -> Iterator[str]:
    Handler.hits, Handler.times = Counter(), []
    httpd = QuietServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


FAST = ["--backoff", "0.01", "--max-wait", "2", "--timeout", "0.5", "--retries", "2", "--rate", "0", "--max-mb", "0.2"]


def url_table(path: Path, base: str, names: list[str]) -> Path:
    """A plain URL table (url + ranks + common + licence + owner), one row per path under `base`."""
    lineage = RARE[0][2]
    with open(path, "w", newline="") as handle:
        handle.write(f"url,{RANKS},common_name,license,owner\n")
        for name in names:
            handle.write(f"{base}{name},{lineage},{RARE[0][3]},cc-by-4.0,Owner of {name}\n")
    return path


def status(out: Path) -> dict[str, dict[str, str]]:
    with open(out / "status.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return {row["url"].split("/", 3)[-1]: row for row in rows}


def test_status_table_records_each_outcome(server: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    names = ["/img/a.jpg", "/png/b", "/missing/c.jpg", "/flaky/d.jpg", "/busy/e.jpg", "/broken/f.jpg",
             "/hang/g.jpg", "/truncated/h.jpg", "/html/i.jpg", "/loop/j.jpg", "/big/k.jpg", "/slowimg/l.jpg", "/elsewhere/m.jpg"]
    catalog = url_table(tmp_path / "urls.csv", server, names)
    out = tmp_path / "dl"
    code = main(["download", str(catalog), "--out", str(out), "--workers", "4", *FAST])
    assert code == 1  # some failed
    rows = status(out)
    ok = {name for name, row in rows.items() if row["outcome"] == "ok"}
    assert ok == {"img/a.jpg", "png/b", "flaky/d.jpg", "busy/e.jpg", "slowimg/l.jpg"}
    for name in ok:
        data = (out / rows[name]["path"]).read_bytes()
        assert rows[name]["sha256"] == hashlib.sha256(data).hexdigest() and int(rows[name]["bytes"]) == len(data)
        assert rows[name]["license"] == "cc-by-4.0" and rows[name]["owner"] == f"Owner of /{name}"
        assert rows[name]["genus"] == "Cyclonaias" and rows[name]["species"] == "tuberculata"
    assert rows["png/b"]["path"].endswith(".png")
    reasons = {name: row["reason"] for name, row in rows.items() if row["outcome"] == "error"}
    assert reasons["missing/c.jpg"] == "HTTP 404" and rows["missing/c.jpg"]["http_status"] == "404"
    assert reasons["broken/f.jpg"].startswith("HTTP 503 (after 3 attempts)")
    assert reasons["hang/g.jpg"].startswith("timed out")
    assert reasons["truncated/h.jpg"].startswith("truncated")
    assert reasons["html/i.jpg"].startswith("not an image") and "DOCTYPE" in reasons["html/i.jpg"]
    assert reasons["loop/j.jpg"] == "too many redirects"
    assert reasons["big/k.jpg"].startswith("too large")
    assert reasons["elsewhere/m.jpg"].startswith("unsupported URL scheme") and Handler.hits["/elsewhere/m.jpg"] == 1
    assert Handler.hits["/flaky/d.jpg"] == 2 and Handler.hits["/busy/e.jpg"] == 2 and Handler.hits["/broken/f.jpg"] == 3
    assert Handler.hits["/missing/c.jpg"] == 1 and Handler.hits["/html/i.jpg"] == 1  # never retried
    assert rows["busy/e.jpg"]["attempts"] == "2"
    printed = capsys.readouterr().out
    assert "5 fetched" in printed and "8 failed" in printed and "HTTP 404" in printed
    assert list(csv.reader(open(out / "status.csv")))[0] == list(STATUS_COLUMNS)


def test_retry_after_is_honoured(server: str, tmp_path: Path) -> None:
    catalog = url_table(tmp_path / "urls.csv", server, ["/busy/x.jpg"])
    started = time.monotonic()
    assert main(["download", str(catalog), "--out", str(tmp_path / "dl"), *FAST]) == 0
    assert time.monotonic() - started >= 0.9  # waited the server's Retry-After: 1, not the 0.01 s backoff


def test_per_host_rate_limit(server: str, tmp_path: Path) -> None:
    catalog = url_table(tmp_path / "urls.csv", server, [f"/img/{i}.jpg" for i in range(12)])
    fast = [arg for arg in FAST if arg not in ("--rate", "0")]
    assert main(["download", str(catalog), "--out", str(tmp_path / "dl"), "--workers", "6", "--rate", "5", *fast]) == 0
    times = sorted(Handler.times)
    assert len(times) == 12
    # at most 5 requests to the host in any one-second window, whatever the number of workers
    assert min(later - earlier for earlier, later in zip(times, times[5:])) >= 0.9


def test_catalog_problems_counted_and_rerun_fetches_nothing(server: str, tmp_path: Path) -> None:
    catalog = tmp_path / "urls.csv"
    catalog.write_text(f"url,{RANKS},license,owner\n"
                       f"{server}/img/1.jpg,{RARE[0][2]},cc0,A\n"
                       f"{server}/img/1.jpg,{RARE[0][2]},cc0,A\n"  # repeated URL: fetched once
                       f"file:///etc/passwd,{RARE[0][2]},cc0,A\n"  # not http(s): never fetched
                       f"{server}/img/2.jpg,,,,,,,,cc0,A\n")  # no taxon: not fetched
    out = tmp_path / "dl"
    assert main(["download", str(catalog), "--out", str(out), *FAST]) == 1
    problems = (out / "problems.csv").read_text()
    assert "repeated URL" in problems and "not an http(s) URL" in problems and "no taxonomic names" in problems
    assert Handler.hits == Counter({"/img/1.jpg": 1})
    assert main(["download", str(catalog), "--out", str(out), *FAST]) == 1  # the catalog problems remain
    assert Handler.hits == Counter({"/img/1.jpg": 1})  # nothing fetched again
    assert len(status(out)) == 1


def test_usage_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["download", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "dl")]) == 2
    assert "nope.csv" in capsys.readouterr().err
    table = tmp_path / "t.csv"
    table.write_text("name,genus\nx,Puma\n")
    assert main(["download", str(table), "--out", str(tmp_path / "dl")]) == 2
    err = capsys.readouterr().err
    assert "no URL column" in err and len(err.strip().splitlines()) == 1
    manifest = tmp_path / "media.csv"
    manifest.write_text("EOL content ID,EOL page ID,Medium Source URL,EOL Full-Size Copy URL,License Name,"
                        "Copyright Owner\n1,2,http://x/a.jpg,http://x/b.jpg,cc0,A\n")
    assert main(["download", str(manifest), "--out", str(tmp_path / "dl")]) == 2
    assert "--taxonomy" in capsys.readouterr().err
    assert main(["download", str(table), "--out", str(tmp_path / "dl"), "--workers", "0"]) == 2
    (tmp_path / "gbif").mkdir()
    (tmp_path / "gbif" / "multimedia.txt").write_text("gbifID\tidentifier\n")
    assert main(["download", str(tmp_path / "gbif"), "--out", str(tmp_path / "dl")]) == 2
    assert "needs multimedia.txt and occurrence.txt" in capsys.readouterr().err
    (tmp_path / "download.zip").write_bytes(b"PK")
    assert main(["download", str(tmp_path / "download.zip"), "--out", str(tmp_path / "dl")]) == 2
    assert "unzip" in capsys.readouterr().err


def test_torn_last_line_is_cut(tmp_path: Path) -> None:
    journal = tmp_path / "status.csv"
    journal.write_bytes(b"key,url\nabc,http://x\ndef,http://y")
    assert repair(journal) == len(b"def,http://y")
    assert journal.read_bytes() == b"key,url\nabc,http://x\n"


def eol_and_gbif(tmp_path: Path, server: str) -> tuple[Path, Path, Path]:
    """An EOL media manifest + page taxonomy, and a GBIF download folder, from the Rare Species rows."""
    manifest = tmp_path / "media_manifest.csv"
    lines = ["EOL content ID,EOL page ID,Medium Source URL,EOL Full-Size Copy URL,License Name,Copyright Owner"]
    lines += [f"{c},{p},https://example.org/{c}.jpg,{server}/img/eol-{c}_{p}.jpg,cc-by-nc-sa-3.0,Owner {c}"
              for c, p, _, _ in RARE]
    lines.append(f"99,12345,,{server}/img/eol-99.jpg,cc0,X")  # page not in the taxonomy
    manifest.write_text("\n".join(lines) + "\n")
    taxonomy = tmp_path / "pages.csv"
    taxonomy.write_text(f"page_id,{RANKS},common\n{RARE[0][1]},{RARE[0][2]},{RARE[0][3]}\n")
    gbif = tmp_path / "gbif"
    gbif.mkdir()
    (gbif / "multimedia.txt").write_text(
        "gbifID\ttype\tformat\tidentifier\treferences\ttitle\tdescription\tsource\taudience\tcreated\tcreator\t"
        "contributor\tpublisher\tlicense\trightsHolder\n"
        f"4011\tStillImage\timage/jpeg\t{server}/img/gbif-1.jpg\t\t\t\t\t\t2021-05-01\tJ. Doe\t\tiNaturalist\t"
        "http://creativecommons.org/licenses/by-nc/4.0/\tJane Doe\n"
        f"4011\tStillImage\timage/jpeg\t{server}/img/gbif-2.jpg\t\t\t\t\t\t\tJ. Doe\t\t\tCC_BY_4_0\t\n"
        f"4012\tSound\taudio/mpeg\t{server}/img/gbif-3.mp3\t\t\t\t\t\t\t\t\t\tCC0_1_0\tX\n")
    (gbif / "occurrence.txt").write_text(
        "gbifID\tbasisOfRecord\tscientificName\tkingdom\tphylum\tclass\torder\tfamily\tgenus\tspecificEpithet\t"
        "taxonRank\tspecies\n"
        "4011\tHUMAN_OBSERVATION\tCyclonaias tuberculata (Rafinesque, 1820)\tAnimalia\tMollusca\tBivalvia\t"
        "Unionida\tUnionidae\tCyclonaias\ttuberculata\tSPECIES\tCyclonaias tuberculata\n"
        "4012\tHUMAN_OBSERVATION\tPuma concolor (Linnaeus, 1771)\tAnimalia\tChordata\tMammalia\tCarnivora\t"
        "Felidae\tPuma\tconcolor\tSPECIES\tPuma concolor\n")
    return manifest, taxonomy, gbif


@pytest.mark.parametrize("engine", ["local", "ray"])
def test_eol_and_gbif_catalogs_build_end_to_end(server: str, tmp_path: Path, engine: str) -> None:
    import pyarrow.parquet as pq

    manifest, taxonomy, gbif = eol_and_gbif(tmp_path, server)
    out = tmp_path / "dl"
    code = main(["download", str(manifest), str(gbif), "--taxonomy", str(taxonomy), "--out", str(out), *FAST])
    assert code == 1  # the unknown page and the sound are catalog problems
    rows = status(out)
    assert len(rows) == 4 and all(row["outcome"] == "ok" for row in rows.values())
    gbif_row = rows["img/gbif-1.jpg"]
    assert (gbif_row["source_id"], gbif_row["owner"], gbif_row["family"]) == ("4011/0", "Jane Doe", "Unionidae")
    assert rows["img/gbif-2.jpg"]["owner"] == "J. Doe"  # no rightsHolder: the creator
    assert rows[f"img/eol-{RARE[0][0]}_{RARE[0][1]}.jpg"]["common"] == RARE[0][3]
    problems = (out / "problems.csv").read_text()
    assert "EOL page 12345 is not in the taxonomy" in problems and "not an image: type Sound" in problems

    shards = tmp_path / "shards"
    assert main(["build", "--source", f"download:{out}", "--out", str(shards), "--engine", engine,
                 "--image-size", "16", "--val-fraction", "0"]) == 0
    catalog = pq.read_table(shards / "catalog.parquet").to_pylist()
    by_id = {row["source_id"]: row for row in catalog}
    assert set(by_id) == {f"eol:{RARE[0][0]}", f"eol:{RARE[1][0]}", "gbif:4011/0", "gbif:4011/1"}
    assert by_id["gbif:4011/0"]["license"] == "http://creativecommons.org/licenses/by-nc/4.0/"
    assert by_id["gbif:4011/0"]["owner"] == "Jane Doe"
    assert by_id[f"eol:{RARE[0][0]}"]["owner"] == f"Owner {RARE[0][0]}"
    assert by_id[f"eol:{RARE[0][0]}"]["species"] == "tuberculata"
    assert {row["sha256"] for row in catalog} == {row["sha256"] for row in rows.values()}


def test_parts_share_a_catalog_and_build_together(server: str, tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    names = [f"/img/{i}.jpg" for i in range(12)]
    catalog = url_table(tmp_path / "urls.csv", server, names)
    outs = [tmp_path / f"dl{i}" for i in range(3)]
    for index, out in enumerate(outs):
        assert main(["download", str(catalog), "--out", str(out), "--part", f"{index}/3", *FAST]) == 0
    fetched = [set(status(out)) for out in outs]
    assert all(fetched) and set().union(*fetched) == {n.lstrip("/") for n in names}
    assert sum(map(len, fetched)) == len(names)  # each URL in exactly one part
    assert Handler.hits == Counter(dict.fromkeys(names, 1))
    shards = tmp_path / "shards"
    sources = [arg for out in outs for arg in ("--source", f"download:{out}")]
    assert main(["build", *sources, "--out", str(shards), "--image-size", "16"]) == 0
    assert pq.read_metadata(shards / "catalog.parquet").num_rows == len(names)
    assert main(["download", str(catalog), "--out", str(tmp_path / "x"), "--part", "3/3"]) == 2


def test_treeoflife_200m_parquet_catalog(server: str, tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    lineage = RARE[0][2].split(",")
    catalog = tmp_path / "catalog.parquet"
    pq.write_table(pa.table({
        "uuid": ["aa563519-6d97-47c3-bcda-c72cdf19a1bf", "e3253a67-7114-41d5-ac55-1696d6c7f6f3"],
        "data_source": ["gbif", "eol"],
        "source_url": [f"{server}/img/tol-1.jpg", f"{server}/missing/tol-2.jpg"],
        **{rank: [name, name] for rank, name in zip(RANKS.split(","), lineage)},
        "common": [RARE[0][3], RARE[0][3]],
    }), catalog)
    out = tmp_path / "dl"
    assert main(["download", str(catalog), "--out", str(out), *FAST]) == 1
    rows = status(out)
    assert (rows["img/tol-1.jpg"]["source"], rows["img/tol-1.jpg"]["source_id"]) == (
        "gbif", "aa563519-6d97-47c3-bcda-c72cdf19a1bf")
    assert rows["missing/tol-2.jpg"]["outcome"] == "error" and rows["missing/tol-2.jpg"]["source"] == "eol"


def test_build_reports_failed_downloads(server: str, tmp_path: Path) -> None:
    catalog = url_table(tmp_path / "urls.csv", server, ["/img/a.jpg", "/missing/b.jpg"])
    out = tmp_path / "dl"
    assert main(["download", str(catalog), "--out", str(out), *FAST]) == 1
    shards = tmp_path / "shards"
    code = main(["build", "--source", f"download:{out}", "--out", str(shards), "--image-size", "16"])
    assert code == 1  # built, with the failed download reported as a problem
    assert "not downloaded: HTTP 404" in (shards / "problems.csv").read_text()


def test_sigkill_then_resume_fetches_nothing_twice(server: str, tmp_path: Path) -> None:
    names = [f"/slowimg/{i}.jpg" for i in range(60)]
    catalog = url_table(tmp_path / "urls.csv", server, names)
    out = tmp_path / "dl"
    command = [sys.executable, "-m", "treeclip", "download", str(catalog), "--out", str(out), "--workers", "2", *FAST]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and sum(Handler.hits.values()) < 15:
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    before = {name for name, row in status(out).items() if row["outcome"] == "ok"}
    assert 0 < len(before) < len(names), "the kill should land mid-run"
    hits_before = Counter(Handler.hits)

    assert main(["download", str(catalog), "--out", str(out), *FAST]) == 0
    rows = status(out)
    assert set(rows) == {name.lstrip("/") for name in names} and all(r["outcome"] == "ok" for r in rows.values())
    again = {path for path, count in Handler.hits.items() if count > hits_before[path] and hits_before[path]}
    assert not again & {"/" + name for name in before}  # nothing recorded before the kill was fetched again
    assert len(again) <= 2  # only requests in flight at the kill (one per worker) are repeated
    with open(out / "status.csv") as handle:
        keys = [row["key"] for row in csv.DictReader(handle)]
    assert len(keys) == len(set(keys)) == len(names)  # one row per URL: nothing duplicated, nothing lost


def test_sigterm_stops_without_unrecorded_fetches(server: str, tmp_path: Path) -> None:
    names = [f"/slowimg/{i}.jpg" for i in range(60)]
    catalog = url_table(tmp_path / "urls.csv", server, names)
    out = tmp_path / "dl"
    command = [sys.executable, "-m", "treeclip", "download", str(catalog), "--out", str(out), "--workers", "2", *FAST]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and sum(Handler.hits.values()) < 15:
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 143 and "terminated" in err
    recorded = {"/" + name for name in status(out)}
    assert len(recorded) < len(names)
    # queued fetches were cancelled, not run unrecorded: only the two in flight were requested beyond the table
    assert len(set(Handler.hits) - recorded) <= 2


def test_image_written_but_unrecorded_is_recovered_not_refetched(server: str, tmp_path: Path) -> None:
    catalog = url_table(tmp_path / "urls.csv", server, ["/img/a.jpg", "/img/b.jpg"])
    out = tmp_path / "dl"
    assert main(["download", str(catalog), "--out", str(out), *FAST]) == 0
    lines = (out / "status.csv").read_text().splitlines(keepends=True)
    # as if killed after writing b's image, before its row
    (out / "status.csv").write_text("".join(line for line in lines if "/img/b.jpg" not in line))
    assert main(["download", str(catalog), "--out", str(out), *FAST]) == 0
    assert Handler.hits == Counter({"/img/a.jpg": 1, "/img/b.jpg": 1})
    assert status(out)["img/b.jpg"]["reason"].startswith("recovered")


@pytest.mark.slow
def test_download_then_ray_build_sigkilled_and_resumed(server: str, tmp_path: Path) -> None:
    """The issue's end to end: download (killed and resumed above), then ``build --engine ray`` SIGKILLed mid-run
    and resumed: every downloaded image exactly once, shards and catalog identical to a local build."""
    pytest.importorskip("ray")
    import pyarrow.parquet as pq

    n = 120
    catalog = url_table(tmp_path / "urls.csv", server, [f"/photo/{i}.jpg" for i in range(n)])
    dl = tmp_path / "dl"
    assert main(["download", str(catalog), "--out", str(dl), *FAST]) == 0
    common = ["--source", f"download:{dl}", "--image-size", "96", "--shard-size", "4", "--val-fraction", "0.1"]
    local, on_ray = tmp_path / "local", tmp_path / "ray"
    assert main(["build", *common, "--out", str(local), "--workers", "1"]) == 0
    args = ["build", *common, "--out", str(on_ray), "--workers", "2", "--engine", "ray"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    process = subprocess.Popen([sys.executable, "-m", "treeclip", *args], env=env, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(list(on_ray.glob("*/shard-*.tar"))) < 2 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (on_ray / "manifest.json").exists(), "the build finished before it could be killed"
    assert main([*args, "--resume"]) == 0
    shards = sorted(p.relative_to(local) for p in local.glob("*/shard-*.tar"))
    assert shards == sorted(p.relative_to(on_ray) for p in on_ray.glob("*/shard-*.tar"))
    assert all((on_ray / p).read_bytes() == (local / p).read_bytes() for p in shards)
    assert (on_ray / "catalog.parquet").read_bytes() == (local / "catalog.parquet").read_bytes()
    rows = pq.read_table(on_ray / "catalog.parquet").to_pylist()
    assert len(rows) == len({row["id"] for row in rows}) == n
    assert {row["owner"] for row in rows} == {f"Owner of /photo/{i}.jpg" for i in range(n)}


# --- download: retried URLs resolved without a per-URL map (issue 15) ------------------------------------------


def status_table(folder: Path, rows: list[tuple[str, str]], torn: str = "") -> Path:
    """A status.csv of (key, outcome) rows (row N+2 for rows[N]), the ok rows' images on disk, and optionally
    a torn last line (no line end, too few fields) as a kill leaves it."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(STATUS_COLUMNS)
    for number, (key, outcome) in enumerate(rows, start=2):
        values = {"key": key, "outcome": outcome, "reason": "" if outcome == "ok" else "HTTP 500",
                  "path": f"images/{number}.jpg", "source": "table", "source_id": key, "genus": "Morus",
                  "species": "alba", "url": f"http://x/{key}"}
        writer.writerow([values.get(name, "") for name in STATUS_COLUMNS])
        if outcome == "ok":
            (folder / "images" / f"{number}.jpg").write_bytes(b"jpeg")
    (folder / "status.csv").write_text(buffer.getvalue() + torn)
    return folder


def final_rows(rows: list[tuple[str, str]]) -> list[int]:
    """The rule, spelled out: each key's last row (its final attempt) is the one read, in table order."""
    last = {key: number for number, (key, _) in enumerate(rows, start=2)}
    return sorted(last.values())


def origins(items: list[object]) -> list[tuple[str, int]]:
    return [(type(item).__name__, int(item.origin.rsplit(":", 1)[1])) for item in items]  # type: ignore[attr-defined]


@pytest.mark.parametrize("rows", [1, 3, 100])
def test_download_source_reads_each_retried_urls_final_row(tmp_path: Path, rows: int) -> None:
    """A key tried 3 times (final ok), a retry whose final row failed, attempts in different parts, and a torn
    last line that repeats a key: only each key's final row is read (a failed final row is a problem, the ok
    row before it is not a record), whole or part by part; the torn line is a problem and no attempt."""
    from treeclip.data.sources import open_source

    table = [("k1", "error"), ("k2", "ok"), ("k1", "error"), ("k3", "error"), ("k1", "ok"), ("k2", "error"),
             ("k4", "ok"), ("k3", "ok")]
    folder = status_table(tmp_path / "dl", table, torn="k4,error,HTTP 500")
    whole = list(open_source(f"download:{folder}").records())
    assert origins(whole) == [("Record", 6), ("Problem", 7), ("Record", 8), ("Record", 9), ("Problem", 10)]
    assert "not downloaded: HTTP 500" in whole[1].reason and "malformed row" in whole[4].reason
    source = open_source(f"download:{folder}")
    parts = source.parts(rows=rows, prefix=str(tmp_path / "part"))
    assert len(parts) == {1: 8, 3: 3, 100: 1}[rows]
    assert [item for part in parts for item in open_source(f"download:{folder}").records(part)] == whole
    assert json.loads(Path(parts[0].retried).read_text()) == {"k1": 6, "k2": 7, "k3": 9}


@pytest.mark.parametrize("collide", [False, True])
def test_download_retried_keys_match_the_rule_even_when_digests_collide(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, collide: bool) -> None:
    """500 rows, keys tried 1-3 times with random outcomes, read in parts of 37 rows: the final rows read are
    exactly those of a plain last-row-per-key map. With every key given the same digest (`collide`), keys
    are still told apart by their text (a digest-only comparison would keep one row in all)."""
    import random

    from treeclip.data.sources import download, open_source

    if collide:
        monkeypatch.setattr(download, "_key_digest", lambda key: 7)
    rng = random.Random(15)
    table = [(f"{rng.randrange(300):032x}", rng.choice(["ok", "ok", "error"])) for _ in range(500)]
    assert max(Counter(key for key, _ in table).values()) >= 3
    folder = status_table(tmp_path / "dl", table)
    expected = final_rows(table)
    assert [line for _, line in origins(list(open_source(f"download:{folder}").records()))] == expected
    parts = open_source(f"download:{folder}").parts(rows=37, prefix=str(tmp_path / "part"))
    read = [item for part in parts for item in open_source(f"download:{folder}").records(part)]
    assert [line for _, line in origins(read)] == expected
    repeated = {key for key, n in Counter(key for key, _ in table).items() if n > 1}
    last = {key: number for number, (key, _) in enumerate(table, start=2)}
    assert json.loads(Path(parts[0].retried).read_text()) == {key: last[key] for key in repeated}
