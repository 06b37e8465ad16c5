"""Every environment variable, read at call time, with clear errors for bad values."""

import base64
import json

import pytest

from hubcache import ConfigError
from hubcache.config import kaggle_credentials, load_settings


def test_cache_dir_precedence(tmp_path):
    env = {"TFHUB_CACHE_DIR": str(tmp_path / "a"), "HUBCACHE_CACHE_DIR": str(tmp_path / "b")}
    assert load_settings(environ=env).cache_dir == str(tmp_path / "a")
    del env["TFHUB_CACHE_DIR"]
    assert load_settings(environ=env).cache_dir == str(tmp_path / "b")
    assert load_settings(environ=env, cache_dir=str(tmp_path / "c")).cache_dir == str(tmp_path / "c")


def test_default_cache_dir_is_persistent_user_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert load_settings(environ={}).cache_dir == str(tmp_path / "xdg" / "hubcache")


def test_settings_are_read_at_call_time(monkeypatch, tmp_path):
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path / "later"))
    assert load_settings().cache_dir == str(tmp_path / "later")


@pytest.mark.parametrize("value, expected", [("1", True), ("true", True), ("YES", True), ("0", False), ("", False), ("off", False)])
def test_offline_values(value, expected):
    assert load_settings(environ={"HUBCACHE_OFFLINE": value, "TFHUB_CACHE_DIR": "/c"}).offline is expected


def test_bad_boolean_names_the_variable():
    with pytest.raises(ConfigError, match="HUBCACHE_OFFLINE='maybe'"):
        load_settings(environ={"HUBCACHE_OFFLINE": "maybe", "TFHUB_CACHE_DIR": "/c"})


@pytest.mark.parametrize("value, expected", [("compressed", "COMPRESSED"), ("AUTO", "COMPRESSED"), ("Uncompressed", "UNCOMPRESSED"), ("", "COMPRESSED")])
def test_load_format(value, expected):
    assert load_settings(environ={"TFHUB_MODEL_LOAD_FORMAT": value, "TFHUB_CACHE_DIR": "/c"}).load_format == expected


def test_load_format_typo_is_an_error_listing_the_values():
    with pytest.raises(ConfigError) as e:
        load_settings(environ={"TFHUB_MODEL_LOAD_FORMAT": "COMPRESED", "TFHUB_CACHE_DIR": "/c"})
    assert "TFHUB_MODEL_LOAD_FORMAT" in str(e.value) and "UNCOMPRESSED" in str(e.value)


@pytest.mark.parametrize(
    "env, expected",
    [
        ({}, None),
        ({"TFHUB_DOWNLOAD_PROGRESS": "1"}, True),
        ({"TFHUB_DOWNLOAD_PROGRESS": "yes please"}, True),
        ({"TFHUB_DOWNLOAD_PROGRESS": "0"}, False),
        ({"TFHUB_DOWNLOAD_PROGRESS": "false"}, False),
        ({"TFHUB_DOWNLOAD_PROGRESS": ""}, False),
        ({"TFHUB_DOWNLOAD_PROGRESS": "1", "HUBCACHE_DISABLE_PROGRESS": "1"}, False),
    ],
)
def test_progress_switches(env, expected):
    assert load_settings(environ=dict(env, TFHUB_CACHE_DIR="/c")).progress is expected


def test_endpoints_and_their_validation():
    s = load_settings(environ={"TFHUB_CACHE_DIR": "/c", "HUBCACHE_TFHUB_ENDPOINT": "http://127.0.0.1:8080/"})
    assert s.tfhub_endpoint == "http://127.0.0.1:8080"
    assert s.kaggle_endpoint == "https://www.kaggle.com"
    for name in ("HUBCACHE_TFHUB_ENDPOINT", "HUBCACHE_KAGGLE_ENDPOINT", "HUBCACHE_GCS_ENDPOINT", "HUBCACHE_CN_MIRROR_ENDPOINT"):
        with pytest.raises(ConfigError, match=name):
            load_settings(environ={"TFHUB_CACHE_DIR": "/c", name: "ftp://mirror"})


def test_timeouts():
    s = load_settings(environ={"TFHUB_CACHE_DIR": "/c", "HUBCACHE_TIMEOUT": "2.5", "HUBCACHE_LOCK_TIMEOUT": "7"})
    assert (s.timeout, s.lock_timeout) == (2.5, 7.0)
    for bad in ("0", "-1", "soon"):
        with pytest.raises(ConfigError, match="HUBCACHE_TIMEOUT"):
            load_settings(environ={"TFHUB_CACHE_DIR": "/c", "HUBCACHE_TIMEOUT": bad})


def test_kaggle_credentials_order_and_masking(tmp_path):
    (tmp_path / "kaggle.json").write_text(json.dumps({"username": "fileuser", "key": "filekey"}))
    base = {"KAGGLE_CONFIG_DIR": str(tmp_path)}
    creds = kaggle_credentials(base)
    assert creds.authorization == "Basic " + base64.b64encode(b"fileuser:filekey").decode()
    assert "filekey" not in repr(creds) and "filekey" not in str(creds)
    env = dict(base, KAGGLE_USERNAME="u", KAGGLE_KEY="k")
    assert kaggle_credentials(env).authorization == "Basic " + base64.b64encode(b"u:k").decode()
    env["KAGGLE_API_TOKEN"] = "tok"
    assert kaggle_credentials(env).authorization == "Bearer tok"
    assert kaggle_credentials({"KAGGLE_CONFIG_DIR": str(tmp_path / "none")}) is None


def test_broken_kaggle_json_is_named_but_not_quoted(tmp_path):
    (tmp_path / "kaggle.json").write_text('{"username": "u", "key": "s3cret"')
    with pytest.raises(ConfigError) as e:
        kaggle_credentials({"KAGGLE_CONFIG_DIR": str(tmp_path)})
    assert str(tmp_path / "kaggle.json") in str(e.value) and "s3cret" not in str(e.value)


def test_retry_and_bound_settings():
    s = load_settings(environ={"TFHUB_CACHE_DIR": "/c"})
    assert (s.max_retries, s.backoff, s.max_size, s.max_files, s.max_ratio) == (5, 1.0, 100 << 30, 1_000_000, 250)
    s = load_settings(
        environ={
            "TFHUB_CACHE_DIR": "/c",
            "HUBCACHE_MAX_RETRIES": "0",
            "HUBCACHE_BACKOFF": "0.25",
            "HUBCACHE_MAX_SIZE": "1.5G",
            "HUBCACHE_MAX_FILES": "10",
            "HUBCACHE_MAX_RATIO": "0",
        }
    )
    assert (s.max_retries, s.backoff, s.max_size, s.max_files, s.max_ratio) == (0, 0.25, 3 << 29, 10, 0)
    for name, bad in [("HUBCACHE_MAX_RETRIES", "2.5"), ("HUBCACHE_MAX_RETRIES", "-1"), ("HUBCACHE_BACKOFF", "x"),
                      ("HUBCACHE_MAX_SIZE", "lots"), ("HUBCACHE_MAX_SIZE", "0"), ("HUBCACHE_MAX_FILES", "-3")]:
        with pytest.raises(ConfigError, match=name):
            load_settings(environ={"TFHUB_CACHE_DIR": "/c", name: bad})
