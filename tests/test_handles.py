"""Handle parsing and planning: every accepted form, and clear errors for the rest."""

import pytest

from hubcache import HandleError
from hubcache.config import load_settings
from hubcache.handles import GCS, GCS_DIR, KAGGLE, LOCAL, TFHUB, TFHUB_CN, URL, cache_key, parse
from hubcache.resolvers import ArchivePlan, LocalPlan, LocationPlan, plan


def settings(**env):
    base = {"TFHUB_CACHE_DIR": "/tmp/unused"}
    base.update(env)
    return load_settings(environ=base)


def test_cache_key_is_tensorflow_hubs_sha1_of_the_handle_as_written():
    # The example from tensorflow_hub's cache layout.
    assert cache_key("https://tfhub.dev/google/yamnet/1") == "9616fd04ec2360621642ef9455b84f4b668e219e"
    assert parse("https://tfhub.dev/google/yamnet/1/").cache_key != parse("https://tfhub.dev/google/yamnet/1").cache_key


@pytest.mark.parametrize(
    "raw, path",
    [
        ("/models/m", "/models/m"),
        ("file:///models/my%20model", "/models/my model"),
        ("file://localhost/models/m", "/models/m"),
    ],
)
def test_local_forms(raw, path):
    h = parse(raw)
    assert (h.kind, h.location) == (LOCAL, path)


def test_relative_and_home_paths(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert parse("rel/model").location == str(tmp_path / "rel" / "model")
    assert parse("~/m").location == str(tmp_path / "home" / "m")


@pytest.mark.parametrize(
    "raw, location",
    [
        ("https://tfhub.dev/google/nnlm-en-dim128/2", "/google/nnlm-en-dim128/2"),
        ("http://tfhub.dev/google/nnlm-en-dim128/2", "/google/nnlm-en-dim128/2"),
        ("https://tfhub.dev/google/nnlm-en-dim128/2/", "/google/nnlm-en-dim128/2"),
        ("https://TFHub.dev/google/imagenet/mobilenet_v2_100_224/classification/5",
         "/google/imagenet/mobilenet_v2_100_224/classification/5"),
    ],
)
def test_tfhub_forms(raw, location):
    h = parse(raw)
    assert (h.kind, h.location) == (TFHUB, location)


def test_tfhub_plan_adds_the_format_query_keeps_others_and_uses_the_endpoint():
    s = settings(HUBCACHE_TFHUB_ENDPOINT="http://mirror.local:8080/hub/")
    p = plan(parse("https://tfhub.dev/google/m/2?foo=bar&tf-hub-format=uncompressed"), s)
    assert isinstance(p, ArchivePlan) and p.require_saved_model
    assert p.urls == ("http://mirror.local:8080/hub/google/m/2?foo=bar&tf-hub-format=compressed",)
    assert p.credentials_for == "https://www.kaggle.com"


@pytest.mark.parametrize(
    "raw",
    [
        "https://www.kaggle.com/models/google/nnlm/TensorFlow2/en-dim128/2",
        "https://kaggle.com/models/google/nnlm/tensorFlow2/en-dim128/2/",
        "https://www.kaggle.com/models/google/nnlm/frameworks/TensorFlow2/variations/en-dim128/versions/2",
    ],
)
def test_kaggle_forms(raw):
    h = parse(raw)
    assert h.kind == KAGGLE
    assert [p.lower() for p in h.kaggle] == ["google", "nnlm", "tensorflow2", "en-dim128", "2"]
    p = plan(h, settings(HUBCACHE_KAGGLE_ENDPOINT="http://127.0.0.1:9"))
    assert p.urls[0].startswith("http://127.0.0.1:9/models/google/nnlm/")
    assert p.urls[0].endswith("tf-hub-format=compressed")
    assert p.urls[1].lower() == "http://127.0.0.1:9/api/v1/models/google/nnlm/tensorflow2/en-dim128/2/download"


@pytest.mark.parametrize(
    "raw",
    [
        "https://www.kaggle.com/models/google/nnlm",
        "https://www.kaggle.com/datasets/x/y",
        "https://tfhub.dev/google/nnlm",
        "https://tfhub.dev/google/collections/bert",
    ],
)
def test_malformed_hub_urls_are_refused_with_the_expected_shape(raw):
    with pytest.raises(HandleError) as e:
        parse(raw)
    assert raw in str(e.value) and "should look like" in str(e.value)


def test_kaggle_latest_suffix_gets_a_did_you_mean():
    raw = "https://www.kaggle.com/models/google/nnlm/TensorFlow2/en-dim128/latest"
    with pytest.raises(HandleError, match=r"Did you mean https://www\.kaggle\.com/models/google/nnlm/TensorFlow2/en-dim128 \?"):
        parse(raw)


def test_china_mirror_rewrite():
    h = parse("https://hub.tensorflow.google.cn/google/nnlm-en-dim128/2")
    assert h.kind == TFHUB_CN
    p = plan(h, settings())
    assert p.urls == ("https://gcs.tensorflow.google.cn/tfhub-modules/google/nnlm-en-dim128/2.tar.gz",)


@pytest.mark.parametrize("suffix", [".tar.gz", ".tgz", ".tar", ".zip"])
def test_gcs_archives_are_fetched_over_https(suffix):
    h = parse(f"gs://my-bucket/models/m{suffix}")
    assert h.kind == GCS
    assert plan(h, settings()).urls == (f"https://storage.googleapis.com/my-bucket/models/m{suffix}",)


def test_a_zip_url_is_fetched_as_written():
    raw = "https://example.com/m.zip?X-Amz-Signature=abc"
    assert plan(parse(raw), settings()).urls == (raw,)


def test_gcs_without_archive_suffix_is_a_directory():
    assert parse("gs://bucket/saved_model_dir").kind == GCS_DIR


@pytest.mark.parametrize("raw", ["gs://bucket", "gs://bucket/", "gs:///path", "gs://bucket/m?generation=1"])
def test_gcs_handles_need_a_bucket_and_a_path(raw):
    with pytest.raises(HandleError, match=r"gs://<bucket>/<path>"):
        parse(raw)


def test_plain_urls():
    s = settings()
    signed = "https://s3.example.com/m.tar.gz?X-Amz-Signature=abc"
    assert plan(parse(signed), s).urls == (signed,)  # as written: the signature must stay intact
    assert plan(parse("https://example.com/models/m?v=1"), s).urls == (
        "https://example.com/models/m?v=1&tf-hub-format=compressed",
    )
    assert parse("https://example.com/m").kind == URL
    assert not plan(parse("https://example.com/m"), s).require_saved_model


@pytest.mark.parametrize("raw", ["ftp://host/m.tar.gz", "s3://bucket/m.tar.gz", "", " https://tfhub.dev/a/b/1", "x\n"])
def test_unknown_forms_list_the_accepted_ones(raw):
    with pytest.raises(HandleError) as e:
        parse(raw)
    assert repr(raw) in str(e.value)
    if "://" in raw and not raw.startswith(" "):
        assert "tfhub.dev/<publisher>/<model>/<version>" in str(e.value)


def test_handle_error_is_a_value_error():
    with pytest.raises(ValueError):
        parse("ftp://x")


def test_uncompressed_mode_plans_a_location_request_only_for_protocol_urls():
    s = settings(TFHUB_MODEL_LOAD_FORMAT="uncompressed")
    p = plan(parse("https://tfhub.dev/google/m/1"), s)
    assert isinstance(p, LocationPlan)
    assert p.url == "https://tfhub.dev/google/m/1?tf-hub-format=uncompressed"
    # An archive is an archive: nothing to ask.
    assert isinstance(plan(parse("gs://b/m.tar.gz"), s), ArchivePlan)
    assert isinstance(plan(parse("https://x.org/m.tgz"), s), ArchivePlan)


def test_local_plan():
    assert plan(parse("/a/b"), settings()) == LocalPlan("/a/b")
