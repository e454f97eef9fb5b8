"""Per-key quotas (service.core.quotas): token buckets for requests per second (charged at
authentication) and megapixels per minute (charged at admission, after the in-flight budget has room),
429 quota_exceeded with Retry-After, on the native and v2 routes, metrics by key name."""
from __future__ import annotations

import pytest

from kserve_cases import DECODER, infer_path, json_tensor, latents_f32
from service.core.admission import Admission
from service.core.auth import Principal, Quota
from service.core.errors import BudgetFull, QuotaExceeded
from service.core.metrics import ServiceMetrics
from service.core.quotas import Quotas, TokenBucket
from service.core.settings import ServiceSettings
from service_cases import F, latents, st_bytes
from test_auth_keys import ALICE, BOB, bearer, keys_file
from test_service_app import assert_json_error, make_client, wait_ready

MP = 1_000_000


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_bucket_refills_at_its_rate_up_to_its_capacity():
    clock = Clock()
    bucket = TokenBucket(rate=2.0, capacity=4.0, clock=clock)
    assert [bucket.take(1) for _ in range(4)] == [0.0] * 4
    assert bucket.take(1) == pytest.approx(0.5)  # one token comes back in 1/rate seconds
    clock.now = 10.0
    assert bucket.take(3) == 0.0 and bucket.tokens == pytest.approx(1.0)  # capped at capacity, not 20


def test_a_full_bucket_admits_one_cost_larger_than_itself_then_waits_for_the_debt():
    clock = Clock()
    bucket = TokenBucket(rate=1.0, capacity=5.0, clock=clock)
    assert bucket.take(8) == 0.0 and bucket.tokens == -3.0
    assert bucket.take(8) == pytest.approx(8.0)  # back to full (5) takes 8 s
    clock.now = 8.0
    assert bucket.take(8) == 0.0


def test_requests_per_second_quota_refuses_with_retry_after_and_recovers():
    clock, metrics = Clock(), ServiceMetrics()
    quotas = Quotas(metrics, clock)
    p = Principal("alice", Quota(rps=2.0))
    quotas.charge_request(p)
    quotas.charge_request(p)
    with pytest.raises(QuotaExceeded, match="'alice' is over its quota of 2 requests per second") as err:
        quotas.charge_request(p)
    assert err.value.status == 429 and err.value.headers == {"Retry-After": "1"}
    clock.now = 0.5
    quotas.charge_request(p)
    quotas.charge_request(Principal("bob"))  # no quota: never refused
    assert metrics.key_requests.labels("alice")._value.get() == 3
    assert metrics.quota_rejections.labels("alice", "rps")._value.get() == 1


def test_a_slow_rate_gives_a_long_retry_after():
    quotas = Quotas(ServiceMetrics(), Clock())
    p = Principal("slow", Quota(rps=0.1))
    quotas.charge_request(p)
    with pytest.raises(QuotaExceeded) as err:
        quotas.charge_request(p)
    assert err.value.headers == {"Retry-After": "10"}


def test_megapixel_quota_through_admission_releases_the_budget_it_refuses():
    clock, metrics = Clock(), ServiceMetrics()
    adm = Admission(ServiceSettings(max_request_pixels=10 * MP, inflight_pixels=20 * MP), metrics,
                    Quotas(metrics, clock))
    p = Principal("alice", Quota(mp_per_min=6.0))  # 0.1 MP per second
    adm.reserve("decode", 4 * MP, p).release()
    with pytest.raises(QuotaExceeded, match="6 megapixels per minute") as err:
        adm.reserve("decode", 4 * MP, p)  # 2 MP left: 2 more take 20 s
    assert err.value.headers == {"Retry-After": "20"}
    assert adm.budget.in_use == 0  # the refused request holds no budget
    clock.now = 20.0
    adm.reserve("decode", 4 * MP, p).release()
    assert metrics.key_megapixels.labels("alice")._value.get() == pytest.approx(8.0)


def test_a_request_the_budget_refuses_costs_no_quota():
    clock, metrics = Clock(), ServiceMetrics()
    adm = Admission(ServiceSettings(max_request_pixels=10 * MP, inflight_pixels=5 * MP), metrics,
                    Quotas(metrics, clock))
    p = Principal("alice", Quota(mp_per_min=6.0))
    held = adm.reserve("decode", 4 * MP, Principal("other"))
    with pytest.raises(BudgetFull):
        adm.reserve("decode", 4 * MP, p)
    held.release()
    adm.reserve("decode", 6 * MP, p).release()  # its bucket is still full


def test_a_reload_with_a_new_quota_takes_effect():
    quotas = Quotas(ServiceMetrics(), Clock())
    quotas.charge_request(Principal("a", Quota(rps=1.0)))
    with pytest.raises(QuotaExceeded):
        quotas.charge_request(Principal("a", Quota(rps=1.0)))
    quotas.charge_request(Principal("a", Quota(rps=100.0)))  # the raised quota starts a new bucket


# --- routes ------------------------------------------------------------------------------------------
@pytest.fixture()
def quota_client(tmp_path, tiny_checkpoint):
    side_pixels = (2 * F) ** 2  # one latents() decode
    path = keys_file(tmp_path, f"{ALICE} name=alice rps=0.001\n"
                               f"{BOB} name=bob mp_per_min={1.5 * side_pixels / MP:.9f}\n")
    with make_client(checkpoint=str(tiny_checkpoint), api_keys=(), api_keys_file=str(path), warmup=False) as c:
        wait_ready(c)
        yield c


def test_routes_answer_429_with_retry_after_per_key_and_metrics_name_the_key(quota_client):
    c = quota_client
    assert c.post("/decode", content=st_bytes(latents()), headers=bearer(ALICE)).status_code == 200
    r = c.post("/decode", content=st_bytes(latents()), headers=bearer(ALICE))
    err = assert_json_error(r, 429, "requests per second")
    assert err["code"] == "quota_exceeded" and int(r.headers["retry-after"]) >= 1
    v2 = c.post(infer_path(DECODER), json={"inputs": [json_tensor("latents", latents_f32(side=1), "FP32")]},
                headers=bearer(ALICE))
    assert v2.status_code == 429 and "requests per second" in v2.json()["error"] and v2.headers["retry-after"]
    assert c.post("/decode", content=st_bytes(latents()), headers=bearer(BOB)).status_code == 200
    r = c.post("/decode", content=st_bytes(latents()), headers=bearer(BOB))
    assert_json_error(r, 429, "megapixels per minute")
    assert c.app.state.service.admission.budget.in_use == 0
    assert c.get("/healthz").status_code == 200  # probes are never charged
    text = c.get("/metrics").text
    assert 'dgae_quota_rejections_total{key="alice",quota="rps"} 2.0' in text
    assert 'dgae_quota_rejections_total{key="bob",quota="mp_per_min"} 1.0' in text
    assert 'dgae_requests_total{route="/decode",status="429"} 2.0' in text
    assert ALICE not in text and BOB not in text


def test_openapi_documents_the_429(quota_client):
    doc = quota_client.get("/openapi.json").json()
    for path in ("/encode", "/decode", "/v2/models/{model_name}/infer"):
        assert "429" in doc["paths"][path]["post"]["responses"], path
