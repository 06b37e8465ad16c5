"""Every handle form users write (tests/data/handle_spellings.tsv: real spellings
from public docs, model pages, notebooks and code), the one rule that names
their cache entries, "latest", and models that are not SavedModels."""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import tarfile
import time

import pytest

import hubcache
from hubcache.config import load_settings
from hubcache.handles import GCS_DIR, KAGGLE, LOCAL, TFHUB, TFHUB_CN, URL, cache_key, kaggle_page, parse, suggest_remote
from hubcache.resolvers import ArchivePlan, DirectoryPlan, LatestPlan, plan

from archives import fake_saved_model, fake_saved_model_files, read_tree
from helpers import run_cli

HERE = os.path.dirname(os.path.abspath(__file__))


def spellings():
    with open(os.path.join(HERE, "data", "handle_spellings.tsv"), encoding="utf-8") as f:
        rows = list(csv.DictReader((line for line in f if not line.startswith("#")), delimiter="\t"))
    return [(r["handle"], r["form"]) for r in rows]


SPELLINGS = spellings()
KINDS = {
    "tfhub": TFHUB,
    "tfhub_lite": TFHUB,
    "tfhub_tfjs": TFHUB,
    "tfhub_cn": TFHUB_CN,
    "kaggle_page": KAGGLE,
    "kaggle_page_unversioned": KAGGLE,
    "kaggle_slug": KAGGLE,
    "kaggle_slug_unversioned": KAGGLE,
    "kaggle_uri": KAGGLE,
    "kaggle_uri_unversioned": KAGGLE,
    "kaggle_api": KAGGLE,
    "https_archive": URL,
    "https_zip": URL,
    "near_miss": LOCAL,
}
ENDPOINTS = {"HUBCACHE_KAGGLE_ENDPOINT": "http://kaggle.test", "HUBCACHE_TFHUB_ENDPOINT": "http://tfhub.test"}


def test_the_collection_covers_every_form_with_sixty_spellings_or_more():
    forms = {form for _, form in SPELLINGS}
    assert len(SPELLINGS) >= 60 and len({h for h, _ in SPELLINGS}) == len(SPELLINGS)
    assert set(KINDS) <= forms


@pytest.mark.parametrize("raw, form", SPELLINGS, ids=[h[:90] for h, _ in SPELLINGS])
def test_every_spelling_parses_names_its_entry_and_plans_offline(raw, form, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no path of these names exists here
    settings = load_settings(environ=dict(ENDPOINTS, TFHUB_CACHE_DIR=str(tmp_path / "c")))
    if form == "gcs_dir":  # listed through the storage JSON API, fetched object by object
        handle = parse(raw)
        how = plan(handle, settings)
        assert handle.kind == GCS_DIR and isinstance(how, DirectoryPlan) and handle.cache_key == cache_key(raw)
        bucket, _, path = raw[len("gs://") :].partition("/")
        assert how.listing == f"https://storage.googleapis.com/storage/v1/b/{bucket}/o"
        assert how.prefix == path.rstrip("/") + "/" and not how.require_saved_model
        return
    if form == "tfhub_tfjs" and not raw.split("?")[0].rstrip("/").split("/")[-1].isdigit():
        with pytest.raises(hubcache.HandleError, match="should look like"):
            parse(raw)  # a TF.js file inside a model, or no version
        return
    handle = parse(raw)
    assert handle.kind == KINDS[form]
    if form == "near_miss":
        assert suggest_remote(raw), raw  # "Did you mean https://..." when the path is missing
        return
    how = plan(handle, settings)
    if form.endswith("_unversioned"):
        owner, model, framework, variation, version = handle.kaggle
        assert version == "" and handle.cache_key == ""
        assert isinstance(how, LatestPlan)
        assert how.url.lower() == f"http://kaggle.test/api/v1/models/{owner}/{model}/{framework}/{variation}/get".lower()
        return
    assert isinstance(how, ArchivePlan)
    if form in ("kaggle_slug", "kaggle_uri"):
        # Not a tensorflow_hub form: named after the canonical page URL.
        assert handle.cache_key == cache_key(kaggle_page(handle.kaggle))
        assert kaggle_page(handle.kaggle).startswith("https://www.kaggle.com/models/")
    else:  # tensorflow_hub's own name: the SHA-1 of the handle as written
        assert handle.cache_key == cache_key(raw)
    if handle.kind == KAGGLE:
        api = "http://kaggle.test/api/v1/models/" + "/".join(handle.kaggle) + "/download"
        page = [u for u in how.urls if "/models/" in u and "/api/" not in u]
        assert [u.lower() for u in how.urls if "/api/" in u] == [api.lower()] and len(page) == 1
        assert page[0].startswith("http://kaggle.test/models/") and page[0].endswith("tf-hub-format=compressed")
        # The page first, as tensorflow_hub fetches it; the API URL first when it is the handle.
        assert (how.urls[0].lower() == api.lower()) == (form == "kaggle_api")
        assert how.credentials_for == "http://kaggle.test"
        assert how.require_saved_model == (handle.kaggle[2].lower() in ("tensorflow1", "tensorflow2"))
    elif handle.kind == TFHUB:
        assert how.urls[0].startswith("http://tfhub.test/") and len(how.urls) == 1
        assert how.require_saved_model == (form == "tfhub")  # lite-model, tfjs-model: judged by content


@pytest.mark.parametrize(
    "spelling",
    [
        "google/tiny/tensorFlow2/small/3",
        "kaggle://google/tiny/tensorFlow2/small/3",
        "kaggle://google/tiny/TensorFlow2/small/3/",
        "google/tiny/tensorflow2/small/3",
        "https://www.kaggle.com/models/google/tiny/tensorFlow2/small/3",
    ],
)
def test_kaggle_spellings_outside_tensorflow_hub_share_the_canonical_entry(spelling, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    canonical = "https://www.kaggle.com/models/google/tiny/tensorFlow2/small/3"
    assert parse(spelling).cache_key == cache_key(canonical)


def test_an_existing_local_path_wins_over_the_slug_grammar(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "google/tiny/tensorFlow2/small").mkdir(parents=True)
    assert parse("google/tiny/tensorFlow2/small").kind == LOCAL
    assert parse("google/tiny/tensorFlow2/other").kind == KAGGLE


@pytest.mark.parametrize(
    "raw, hint",
    [
        ("tfhub.dev/google/nnlm-en-dim128/2", "Did you mean https://tfhub.dev/google/nnlm-en-dim128/2 ?"),
        ("www.kaggle.com/models/google/bert/tensorFlow2/x/1", "Did you mean https://www.kaggle.com/models/"),
        ("google/bert/tensorFlow2/x/latest", "did you mean google/bert/tensorFlow2/x (the latest version)?"),
        ("google/nnlm/2", "Did you mean https://tfhub.dev/google/nnlm/2 ?"),
    ],
)
def test_near_misses_get_a_did_you_mean(env, raw, hint, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(hubcache.ModelNotFoundError) as e:
        hubcache.resolve(raw)
    assert hint in str(e.value)


@pytest.mark.parametrize(
    "raw",
    ["kaggle://google/tiny", "kaggle://google/tiny/tensorFlow2/small/v3", "kaggle://../x/tensorFlow2/small/1"],
)
def test_malformed_kaggle_uris_show_the_shape(raw):
    with pytest.raises(hubcache.HandleError, match=r"kaggle://<owner>/<model>/<framework>/<variation>\[/<version>\]"):
        parse(raw)


# ------------------------------------------------------------------ end to end


def test_slug_kaggle_uri_and_api_url_download_once_into_one_entry(env, hub, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    hub.publish_kaggle("google/tiny/tensorFlow2/small/3", fake_saved_model(3))
    path = hubcache.resolve("google/tiny/tensorFlow2/small/3")
    assert hub.storage.count() == 1
    for spelling in ("kaggle://google/tiny/TensorFlow2/small/3", "https://www.kaggle.com/models/google/tiny/tensorFlow2/small/3"):
        assert hubcache.resolve(spelling) == path
    assert hub.storage.count() == 1
    api = "https://www.kaggle.com/api/v1/models/google/tiny/tensorFlow2/small/3/download"
    api_path = hubcache.resolve(api)  # tensorflow_hub's name for it: an entry of its own, same files
    assert os.path.basename(api_path) == cache_key(api) and read_tree(api_path) == read_tree(path)
    assert hub.storage.count() == 1


def test_an_api_url_is_fetched_from_the_api_first(env, hub, tmp_path):
    hub.publish_kaggle("google/tiny/tensorFlow2/small/3", fake_saved_model(3))
    hubcache.resolve("https://www.kaggle.com/api/v1/models/google/tiny/tensorFlow2/small/3/download")
    assert hub.kaggle.requests_to("/api/v1/models/google/tiny/tensorFlow2/small/3/download")
    assert not hub.kaggle.requests_to("/models/google/tiny/tensorFlow2/small/3")  # no page needed


def test_latest_round_trip_offline_then_after_the_interval(env, hub, tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    hub.publish_kaggle("google/tiny/tensorFlow2/small/1", fake_saved_model(1))
    slug = "google/tiny/tensorFlow2/small"
    first = hubcache.resolve(slug)
    assert os.path.basename(first) == cache_key("https://www.kaggle.com/models/google/tiny/tensorFlow2/small/1")
    assert json.load(open(first + ".hubcache.json"))["handle"] == "https://www.kaggle.com/models/google/tiny/tensorFlow2/small/1"
    hub.publish_kaggle("google/tiny/tensorFlow2/small/2", fake_saved_model(2))
    before = hub.total_requests()
    # Within the interval: no request at all.
    assert hubcache.resolve(slug) == first and hub.total_requests() == before
    # Offline, whatever the age: the version it last resolved to, and a log line says so.
    monkeypatch.setenv("HUBCACHE_OFFLINE", "1")
    monkeypatch.setenv("HUBCACHE_LATEST_INTERVAL", "0")
    with caplog.at_level(logging.INFO, logger="hubcache"):
        assert hubcache.resolve(slug) == first
    assert "last resolved to: 1" in caplog.text and hub.total_requests() == before
    # Online after the interval: Kaggle is asked, and the new version fetched.
    monkeypatch.delenv("HUBCACHE_OFFLINE")
    second = hubcache.resolve(slug)
    assert os.path.basename(second) == cache_key("https://www.kaggle.com/models/google/tiny/tensorFlow2/small/2")
    assert len(hub.kaggle.requests_to("/api/v1/models/google/tiny/tensorFlow2/small/get")) == 2
    # Another spelling of the same "latest" keeps a record of its own (asked for now), same entry:
    assert hubcache.resolve("kaggle://google/tiny/tensorFlow2/small") == second


def test_latest_uses_the_last_answer_when_kaggle_fails(env, hub, tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    hub.publish_kaggle("google/tiny/tensorFlow2/small/1", fake_saved_model(1))
    first = hubcache.resolve("google/tiny/tensorFlow2/small")
    monkeypatch.setenv("HUBCACHE_LATEST_INTERVAL", "0")
    hub.kaggle.fault("/api/v1/models/google/tiny/tensorFlow2/small/get", status=500)
    hub.kaggle_api.fault("/v1/models.ModelApiService/GetModelInstance", status=503)
    with caplog.at_level(logging.WARNING, logger="hubcache"):
        assert hubcache.resolve("google/tiny/tensorFlow2/small") == first
    assert "could not ask Kaggle for the latest version" in caplog.text


def test_latest_offline_without_a_record_says_what_to_do(env, hub, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HUBCACHE_OFFLINE", "1")
    with pytest.raises(hubcache.OfflineError, match="names no version") as e:
        hubcache.resolve("kaggle://google/tiny/tensorFlow2/small")
    assert "hubcache prefetch" in str(e.value) and hub.total_requests() == 0


def test_latest_of_an_unknown_model_is_a_clear_error(env, hub, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(hubcache.DownloadError, match="not found") as e:
        hubcache.resolve("google/nothing/tensorFlow2/small")
    assert e.value.status == 404


def test_gated_latest_asks_with_credentials_and_explains_a_403(env, hub, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    hub.publish_kaggle("google/gated/tensorFlow2/small/1", fake_saved_model(1), authorization="Bearer good")
    with pytest.raises(hubcache.DownloadError, match="accept its licence") as e:
        hubcache.resolve("google/gated/tensorFlow2/small")
    assert e.value.status == 403
    monkeypatch.setenv("KAGGLE_API_TOKEN", "good")
    assert os.path.isdir(hubcache.resolve("google/gated/tensorFlow2/small"))
    assert all(r.headers.get("authorization") is None for r in hub.storage.log)


def _tflite_bundle() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        data = b"TFL3" + bytes(200)
        info = tarfile.TarInfo("model.tflite")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_a_tflite_model_resolves_and_load_says_how_to_open_it(env, hub, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    hub.publish_kaggle("google/mobilenet/tfLite/small/1", _tflite_bundle())
    path = hubcache.resolve("google/mobilenet/TfLite/small/1")
    assert os.listdir(path) == ["model.tflite"]
    pytest.importorskip("tensorflow")
    with pytest.raises(hubcache.ModelNotFoundError) as e:
        hubcache.load("google/mobilenet/TfLite/small/1")
    message = str(e.value)
    assert "holds model.tflite" in message and f"tf.lite.Interpreter(model_path={os.path.join(path, 'model.tflite')!r})" in message


def test_a_tensorflow_framework_still_requires_a_saved_model(env, hub, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    hub.publish_kaggle("google/broken/tensorFlow2/small/1", _tflite_bundle())
    with pytest.raises(hubcache.ArchiveError, match="saved_model.pb"):
        hubcache.resolve("google/broken/tensorFlow2/small/1")


def test_cli_prefetch_lock_records_the_version_latest_resolved_to(env, hub, tmp_path):
    hub.publish_kaggle("google/tiny/tensorFlow2/small/4", fake_saved_model(4))
    lock = tmp_path / "hubcache.lock"
    r = run_cli("prefetch", "kaggle://google/tiny/tensorFlow2/small", "--lock", str(lock), env=env)
    assert r.returncode == 0, r.stderr
    pinned = [line for line in lock.read_text().splitlines() if not line.startswith("#")]
    assert len(pinned) == 1 and pinned[0].startswith("https://www.kaggle.com/models/google/tiny/tensorFlow2/small/4 sha256=")
    assert "kaggle://google/tiny/tensorFlow2/small" in lock.read_text()  # named in a comment
    r = run_cli("ls", "--json", env=env)
    entries = json.loads(r.stdout)["entries"]
    assert [e["handle"] for e in entries] == ["https://www.kaggle.com/models/google/tiny/tensorFlow2/small/4"]
    r = run_cli("info", "--json", "kaggle://google/tiny/tensorFlow2/small", env=env)
    assert r.returncode == 0 and json.loads(r.stdout)["files"] == len(fake_saved_model_files())


def test_a_slug_entry_travels_in_a_bundle(env, hub, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    hub.publish_kaggle("google/tiny/tensorFlow2/small/5", fake_saved_model(5))
    slug = "google/tiny/tensorFlow2/small/5"
    assert run_cli("prefetch", slug, "--bundle", str(tmp_path / "b.tar"), env=env).returncode == 0
    other = dict(env, TFHUB_CACHE_DIR=str(tmp_path / "other"), HUBCACHE_OFFLINE="1")
    r = run_cli("import", str(tmp_path / "b.tar"), env=other)
    assert r.returncode == 0, r.stderr
    r = run_cli("resolve", "kaggle://google/tiny/TensorFlow2/small/5", env=other)
    assert r.returncode == 0 and os.path.basename(r.stdout.strip()) == parse(slug).cache_key


# ------------------------------------------------------------- Kaggle fallbacks

PAGE = "/models/google/tiny/tensorFlow2/small/1"
API = "/api/v1/models/google/tiny/tensorFlow2/small/1/download"


@pytest.mark.parametrize("status", [401, 403, 500, 503])
def test_the_page_route_failing_falls_back_to_the_download_api(env, hub, status, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    hub.publish_kaggle("google/tiny/tensorFlow2/small/1", fake_saved_model(1))
    hub.kaggle.fault(PAGE, status=status)
    path = hubcache.resolve("google/tiny/tensorFlow2/small/1")
    assert sorted(os.listdir(path)) == sorted({p.split("/")[0] for p in fake_saved_model_files()})
    assert hub.kaggle.count(PAGE) >= 1 and hub.kaggle.count(API) == 1


def test_a_tfhub_chain_ending_on_a_kaggle_error_falls_back_to_that_models_api(env, hub, tmp_path):
    hub.publish_tfhub("google/tiny/1", fake_saved_model(1), kaggle="google/tiny/tensorFlow2/tiny/1")
    long_form = "/models/google/tiny/frameworks/tensorFlow2/variations/tiny/versions/1"
    hub.kaggle.fault(long_form, status=403)
    path = hubcache.resolve("https://tfhub.dev/google/tiny/1")
    assert os.path.basename(path) == cache_key("https://tfhub.dev/google/tiny/1")  # tensorflow_hub's name
    assert hub.kaggle.count("/api/v1/models/google/tiny/tensorFlow2/tiny/1/download") == 1


def test_when_every_route_fails_the_error_lists_them_and_names_the_page(env, hub, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    hub.publish_kaggle("google/tiny/tensorFlow2/small/1", fake_saved_model(1), authorization="Bearer right")
    with pytest.raises(hubcache.DownloadError) as e:
        hubcache.resolve("kaggle://google/tiny/tensorFlow2/small/1")
    message = str(e.value)
    assert "every route failed" in message and f"{PAGE}?tf-hub-format=compressed: HTTP 403" in message
    assert f"{API}: HTTP 403" in message and "accept its licence" in message
    assert "The model's page: https://www.kaggle.com/models/google/tiny/tensorFlow2/small/1" in message
    assert e.value.status == 403
    assert all(r.headers.get("authorization") is None for r in hub.storage.log)  # nothing reached storage


RPC = "/v1/models.ModelApiService/DownloadModelInstanceVersion"


def test_when_the_page_and_the_rest_api_fail_the_rpc_api_serves(env, hub, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KAGGLE_API_TOKEN", "tok")
    hub.publish_kaggle("google/tiny/tensorFlow2/small/1", fake_saved_model(1), authorization="Bearer tok")
    hub.kaggle.fault(PAGE, status=403)
    hub.kaggle.fault(API, status=500)
    path = hubcache.resolve("google/tiny/tensorflow2/small/1")
    assert os.path.isdir(path)
    (call,) = hub.kaggle_api.requests_to(RPC)
    assert call.method == "POST" and call.headers["content-type"] == "application/json"
    assert json.loads(call.body) == {
        "ownerSlug": "google",
        "modelSlug": "tiny",
        "framework": "MODEL_FRAMEWORK_TENSOR_FLOW_2",
        "instanceSlug": "small",
        "versionNumber": 1,
    }
    assert call.headers["authorization"] == "Bearer tok"  # the API endpoint is Kaggle's own
    assert all(r.headers.get("authorization") is None for r in hub.storage.log)


def test_every_route_failing_lists_the_rpc_api_too(env, hub, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(hubcache.DownloadError) as e:
        hubcache.resolve("kaggle://google/missing/keras/small/2")
    message = str(e.value)
    assert message.count("HTTP 404") >= 3 and f"{RPC}: HTTP 404" in message and e.value.status == 404


def test_latest_asks_the_rpc_api_when_the_rest_route_fails(env, hub, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    hub.publish_kaggle("google/tiny/tensorFlow2/small/6", fake_saved_model(6))
    hub.kaggle.fault("/api/v1/models/google/tiny/tensorFlow2/small/get", status=403)
    path = hubcache.resolve("google/tiny/tensorFlow2/small")
    assert os.path.basename(path) == cache_key("https://www.kaggle.com/models/google/tiny/tensorFlow2/small/6")
    (call,) = hub.kaggle_api.requests_to("/v1/models.ModelApiService/GetModelInstance")
    assert "versionNumber" not in json.loads(call.body)


def test_a_zip_bundle_of_a_keras_variation(env, hub, tmp_path, monkeypatch):
    from archives import make_zip

    monkeypatch.chdir(tmp_path)
    files = {"config.json": b'{"name": "gemma"}', "model.weights.h5": b"\x89HDF" + bytes(500)}
    hub.publish_kaggle("keras/gemma/keras/gemma_2b_en/2", make_zip(files))
    path = hubcache.resolve("kaggle://keras/gemma/Keras/gemma_2b_en/2")
    assert read_tree(path) == files
    pytest.importorskip("tensorflow")
    with pytest.raises(hubcache.ModelNotFoundError, match="keras-hub"):
        hubcache.load("keras/gemma/keras/gemma_2b_en/2")


# ------------------------------------------------------ one model, one download


def test_every_spelling_of_one_model_version_shares_one_download(env, hub, cache_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    hub.publish_tfhub("google/tiny/1", fake_saved_model(7), kaggle="google/tiny/tensorFlow2/tiny/1")
    first = hubcache.resolve("https://tfhub.dev/google/tiny/1")  # its redirect names the Kaggle model
    assert json.load(open(first + ".hubcache.json"))["kaggle_model"] == (
        "https://www.kaggle.com/models/google/tiny/tensorFlow2/tiny/1"
    )
    monkeypatch.setenv("HUBCACHE_OFFLINE", "1")
    before = hub.total_requests()
    spellings = [
        "google/tiny/tensorflow2/tiny/1",
        "kaggle://google/tiny/TensorFlow2/tiny/1",
        "https://www.kaggle.com/models/google/tiny/TensorFlow2/tiny/1",
        "https://www.kaggle.com/models/google/tiny/frameworks/tensorFlow2/variations/tiny/versions/1",
        "https://www.kaggle.com/api/v1/models/google/tiny/tensorFlow2/tiny/1/download",
    ]
    paths = {spelling: hubcache.resolve(spelling) for spelling in spellings}
    assert hub.total_requests() == before  # offline, and nothing asked
    assert hub.storage.count() == 1  # one download for all
    for spelling, path in paths.items():
        raw = spelling if spelling.startswith("https://") else "https://www.kaggle.com/models/google/tiny/tensorFlow2/tiny/1"
        assert os.path.basename(path) == cache_key(raw)  # each under tensorflow_hub's name for it
        assert read_tree(path) == fake_saved_model_files(7)
        data = os.path.join(path, "variables", "variables.data-00000-of-00001")
        assert os.stat(data).st_ino == os.stat(os.path.join(first, "variables", "variables.data-00000-of-00001")).st_ino
    # Each entry stands alone: removing one leaves the others whole.
    r = run_cli("rm", "-y", "https://tfhub.dev/google/tiny/1", env=dict(env, HUBCACHE_OFFLINE="1"))
    assert r.returncode == 0, r.stderr
    assert read_tree(paths["kaggle://google/tiny/TensorFlow2/tiny/1"]) == fake_saved_model_files(7)
    record = os.path.join(cache_dir, cache_key("https://www.kaggle.com/models/google/tiny/tensorFlow2/tiny/1") + ".hubcache.alias")
    assert not os.path.exists(record)  # it named the removed entry, and nothing else needed it


def test_a_kaggle_spelling_fetched_first_serves_the_others(env, hub, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    hub.publish_kaggle("google/tiny/tensorFlow2/small/2", fake_saved_model(2))
    hubcache.resolve("https://www.kaggle.com/models/google/tiny/TensorFlow2/small/2")
    monkeypatch.setenv("HUBCACHE_OFFLINE", "1")
    path = hubcache.resolve("https://kaggle.com/models/google/tiny/tensorflow2/small/2")
    assert read_tree(path) == fake_saved_model_files(2) and hub.storage.count() == 1


def test_a_pin_is_kept_when_sharing(env, hub, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    hub.publish_kaggle("google/tiny/tensorFlow2/small/3", fake_saved_model(3))
    hubcache.resolve("google/tiny/tensorFlow2/small/3")
    monkeypatch.setenv("HUBCACHE_OFFLINE", "1")
    with pytest.raises(hubcache.OfflineError):  # another archive than the pin: not shared
        hubcache.resolve("https://www.kaggle.com/models/google/tiny/TensorFlow2/small/3", sha256="0" * 64)


# ------------------------------------------------------ every form, through the CLI


def _tfjs_bundle() -> bytes:
    from archives import make_tar

    return make_tar([("model.json", b'{"format": "graph-model"}'), ("group1-shard1of1.bin", bytes(300))])


def test_every_form_through_the_cli(env, hub, tmp_path):
    from archives import make_zip

    hub.publish_kaggle("google/tiny/tensorFlow2/small/8", fake_saved_model(8))
    hub.publish_kaggle("keras/gemma/keras/gemma_2b_en/1", make_zip({"config.json": b"{}"}))
    hub.publish_tfhub("tensorflow/tfjs-model/blazeface/1", _tfjs_bundle(), kaggle="tensorflow/blazeface/tfJs/default/1")
    hub.publish_gcs_dir("b", "m/1", {"saved_model.pb": b"pb"})
    local = tmp_path / "local.tgz"
    local.write_bytes(fake_saved_model(9))
    forms = [
        "google/tiny/tensorFlow2/small/8",
        "google/tiny/tensorFlow2/small",
        "kaggle://google/tiny/TensorFlow2/small/8",
        "https://www.kaggle.com/models/google/tiny/tensorFlow2/small",
        "https://www.kaggle.com/api/v1/models/google/tiny/tensorFlow2/small/8/download",
        "kaggle://keras/gemma/Keras/gemma_2b_en",
        "https://tfhub.dev/tensorflow/tfjs-model/blazeface/1",
        "gs://b/m/1",
        str(local),
    ]
    r = run_cli("prefetch", "--json", *forms, env=env, cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr
    records = json.loads(r.stdout)
    assert [x["handle"] for x in records] == forms and all(x["ok"] for x in records)
    offline = dict(env, HUBCACHE_OFFLINE="1")
    for form, record in zip(forms, records):
        r = run_cli("resolve", form, env=offline, cwd=str(tmp_path))
        assert r.returncode == 0 and r.stdout.strip() == record["path"], (form, r.stderr)
    assert hub.storage.count("/kaggle-models/google/tiny/tensorFlow2/small/8/model.tar.gz") == 1
    r = run_cli("ls", env=offline, cwd=str(tmp_path))
    assert "(latest of google/tiny/tensorFlow2/small, https://www.kaggle.com/models/google/tiny/tensorFlow2/small)" in r.stdout
    r = run_cli("info", "--json", "kaggle://keras/gemma/Keras/gemma_2b_en", env=offline, cwd=str(tmp_path))
    info = json.loads(r.stdout)
    assert info["latest_of"] == ["kaggle://keras/gemma/Keras/gemma_2b_en"]
    assert info["handle"] == "https://www.kaggle.com/models/keras/gemma/keras/gemma_2b_en/1"
    r = run_cli("info", "kaggle://keras/gemma/Keras/gemma_2b_en", env=offline, cwd=str(tmp_path))
    assert "latest of: ['kaggle://keras/gemma/Keras/gemma_2b_en']" not in r.stdout and "latest of:" in r.stdout


# ------------------------------------------------------------ hostile answers and records


@pytest.mark.parametrize("version", ["%C2%B2", "%D9%A1", "%EF%BC%91"])  # superscript 2, Arabic-Indic and full-width 1
def test_a_version_must_be_ascii_digits(version):
    for raw in (f"https://www.kaggle.com/models/a/b/keras/c/{version}", f"https://www.kaggle.com/api/v1/models/a/b/keras/c/{version}/download"):
        with pytest.raises(hubcache.HandleError, match="should look like"):
            parse(raw)


def test_latest_answers_nested_too_deep_or_dripping_are_refused(env, hub, tmp_path, monkeypatch):
    from hubserver import Reply

    monkeypatch.chdir(tmp_path)
    get = "/api/v1/models/google/deep/tensorFlow2/small/get"
    rpc = "/v1/models.ModelApiService/GetModelInstance"
    hub.kaggle.route(get, lambda req: Reply(200, b"[" * 200_000, {"Content-Type": "application/json"}))
    hub.kaggle_api.fault(rpc, status=404)
    with pytest.raises(hubcache.DownloadError, match="no version"):
        hubcache.resolve("google/deep/tensorFlow2/small")
    # A drip, far under HUBCACHE_MIN_RATE (1 KiB/s, averaged after 1 s), or silence: refused in bounded time.
    monkeypatch.setenv("HUBCACHE_MIN_RATE_WINDOW", "1")
    hub.kaggle.route(get, lambda req: Reply(200, b" " * 100_000 + b'{"versionNumber": 1}', blob=True))
    hub.kaggle.fault(get, bytes_per_second=5)
    started = time.monotonic()
    with pytest.raises(hubcache.DownloadError, match="answers too slowly|did not finish its answer"):
        hubcache.resolve("google/deep/tensorFlow2/small")
    assert time.monotonic() - started < 30


@pytest.mark.parametrize("content", [b"[" * 200_000, b"{" + b" " * (1 << 20) + b"}", None])
def test_hostile_record_files_are_ignored(env, hub, cache_dir, tmp_path, monkeypatch, content):
    monkeypatch.chdir(tmp_path)
    slug = "google/tiny/tensorFlow2/small"
    os.makedirs(cache_dir, exist_ok=True)
    record = os.path.join(cache_dir, cache_key(slug) + ".hubcache.latest")
    if content is None:
        os.symlink("/dev/zero", record)  # endless
    else:
        with open(record, "wb") as f:
            f.write(content)
    monkeypatch.setenv("HUBCACHE_OFFLINE", "1")
    with pytest.raises(hubcache.OfflineError, match="names no version"):
        hubcache.resolve(slug)
    r = run_cli("ls", "--json", env=dict(env, HUBCACHE_OFFLINE="1"))
    assert r.returncode == 0, r.stderr


def test_a_source_removed_while_linking_falls_back_to_a_download(env, hub, cache_dir, tmp_path, monkeypatch):
    from hubcache import aliases
    from hubcache.cache import Cache
    from hubcache.entries import _linked_or

    monkeypatch.chdir(tmp_path)
    hub.publish_kaggle("google/tiny/tensorFlow2/small/4", fake_saved_model(4))
    canonical = "https://www.kaggle.com/models/google/tiny/tensorFlow2/small/4"
    hubcache.resolve(canonical)
    cache = Cache(cache_dir)
    other = cache_key("https://www.kaggle.com/models/google/tiny/TensorFlow2/small/4")
    linked = aliases.source(cache, other, canonical, True, None)
    assert linked is not None
    assert cache.remove(cache_key(canonical), canonical)  # rm, between choosing the source and linking
    dest = tmp_path / "dest"
    dest.mkdir()
    calls = []

    def download(d):
        calls.append(sorted(os.listdir(d)))  # what the failed link left: nothing
        return {"files": {}}

    assert _linked_or(linked, download, "h", str(dest)) == {"files": {}} and calls == [[]]
    with pytest.raises(hubcache.OfflineError, match="could not be made from the cached copy"):
        _linked_or(linked, None, "h", str(dest))


def test_a_small_answer_is_held_to_the_progress_floor(env, monkeypatch):
    import socket
    import threading

    from hubcache.answers import get_json
    from hubcache.config import load_settings
    from hubcache.transport import Transport

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    stop = threading.Event()

    def drip():  # a JSON answer, one byte every 0.2 s: never silent long enough for the read timeout
        conn, _ = server.accept()
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n")
        while not stop.is_set():
            try:
                conn.sendall(b" ")
            except OSError:
                break
            time.sleep(0.2)
        conn.close()

    threading.Thread(target=drip, daemon=True).start()
    monkeypatch.setenv("HUBCACHE_MIN_RATE_WINDOW", "1")
    transport = Transport("h", load_settings(), None)
    started = time.monotonic()
    try:
        with pytest.raises(hubcache.DownloadError, match="answers too slowly"):
            get_json(transport, f"http://127.0.0.1:{server.getsockname()[1]}/x", limit=1 << 20, doing="testing")
    finally:
        stop.set()
        transport.close()
        server.close()
    assert time.monotonic() - started < 5


def test_linked_entries_add_up_to_the_disk_they_use(env, hub, cache_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    hub.publish_kaggle("google/tiny/tensorFlow2/small/5", fake_saved_model(5, size=2_000_000))
    hubcache.resolve("google/tiny/tensorFlow2/small/5")
    hubcache.resolve("https://www.kaggle.com/models/google/tiny/TensorFlow2/small/5")  # linked, no download
    entries = json.loads(run_cli("ls", "--json", env=env).stdout)["entries"]
    assert len(entries) == 2 and entries[0]["size"] == entries[1]["size"]
    used = sum(e["size"] for e in entries)
    files = sum(len(d) for d in fake_saved_model_files(5, size=2_000_000).values())
    assert files <= used < files * 1.2  # once, not twice
