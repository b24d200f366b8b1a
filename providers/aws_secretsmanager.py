"""AWS Secrets Manager provider (`type: aws-secretsmanager`), built to stay cheap at scale.

- values: `BatchGetSecretValue` for up to 20 latest secrets per call, `GetSecretValue` for pins and
  for whatever a batch cannot return;
- change check: `ListSecrets` pages (100 secrets each, with their `SecretVersionsToStages`), falling
  back to one `DescribeSecret` per secret where a listing cannot answer;
- where IAM denies `ListSecrets` or `BatchGetSecretValue` itself (not one secret in it), the per-secret
  call stands in and the denied one is tried again every few minutes (`bridge.provider.Fallback`);
- `version: previous` is the `AWSPREVIOUS` staging label, and follows rotations like any label;
- every API call is counted by operation and outcome; botocore's retries are off, so the engine's
  backoff is the one place that retries; after a throttle or outage, a batch stops calling AWS.

It returns raw values (SecretString as UTF-8, SecretBinary as bytes); the core applies `key`,
`encoding` and `format`. It never logs a value, a token or a credential.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Sequence
from typing import Any

from bridge.errors import AccessDenied, ProviderError, SecretNotFound, Unavailable
from bridge.provider import (
    PREVIOUS,
    Capabilities,
    Fetched,
    Outcome,
    Provider,
    Request,
    VersionOutcome,
)
from bridge.provider_rules import Fallback, copy_error, each, fan_out
from providers._aws_calls import (
    CREDENTIAL_ENV,
    SDK_LOGGERS,
    ActionDenied,
    AwsClient,
    AwsSettings,
    error_from_code,
)

log = logging.getLogger("secrets_bridge.providers.aws_secretsmanager")

CURRENT = "AWSCURRENT"
PREVIOUS_LABEL = "AWSPREVIOUS"
#: the service's limits: secrets per BatchGetSecretValue call, entries per ListSecrets page
BATCH_SIZE = 20
PAGE_SIZE = 100
_VERSION_ID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
#: an ARN's random 6-character suffix, so a partial ARN (without it) matches too
_ARN_SUFFIX = re.compile(r"-[A-Za-z0-9]{6}$")


class SecretsManagerSettings(AwsSettings):
    """`providers.<name>` for `type: aws-secretsmanager`; credentials come from the standard chain."""

    type: str = "aws-secretsmanager"


class SecretsManagerProvider(Provider):
    """`ref` is a secret name or ARN; `version` a VersionId (UUID), a staging label, or `previous`
    (AWSPREVIOUS)."""

    Settings = SecretsManagerSettings
    settings: SecretsManagerSettings
    capabilities = Capabilities(previous=True, cheap_versions=True)
    sdk_loggers = SDK_LOGGERS
    credential_env = CREDENTIAL_ENV

    def __init__(self, name: str, settings: SecretsManagerSettings) -> None:
        super().__init__(name, settings)
        self._client = AwsClient(self, "secretsmanager", settings)
        #: IAM may refuse the batch value call or the listing; each has a per-secret fallback
        self.batch_fallback = Fallback(
            name, "BatchGetSecretValue", logger=log,
            instead="fetching one secret per GetSecretValue call (allow secretsmanager:BatchGetSecretValue "
                    "to need ~1 call per 20 secrets)")
        self.list_fallback = Fallback(
            name, "ListSecrets", logger=log,
            instead="checking each secret with DescribeSecret, one call per secret per cycle (allow "
                    "secretsmanager:ListSecrets to need ~1 per 100)")
        #: ListSecrets pages the last listing took: below that many refs, DescribeSecret is cheaper
        self._list_pages = 1

    # -- the Provider interface -------------------------------------------------------------

    def fetch(self, request: Request) -> Fetched:
        params: dict[str, Any] = {"SecretId": request.ref}
        if request.version is not None:
            pin = _label(request.version)
            params["VersionId" if _VERSION_ID.match(pin) else "VersionStage"] = pin
        response = self._call("GetSecretValue", request.ref, request.version, params)
        return _fetched(response, self.name, request)

    def moves(self, version: str) -> bool:
        """A staging label (and `previous`) moves with every rotation; a VersionId never does."""
        return not _VERSION_ID.match(version)

    def fetch_many(self, requests: Sequence[Request]) -> dict[Request, Outcome]:
        """Latest values in batches of 20; pins and leftovers one by one; stop calling on a throttle."""
        unique = list(dict.fromkeys(requests))
        out: dict[Request, Outcome] = {}
        latest = [r for r in unique if r.version in (None, CURRENT)]
        down: Unavailable | None = None
        if len(latest) >= 2:
            for chunk in _chunks(latest, BATCH_SIZE):
                if down is not None or not self.batch_fallback.allowed():
                    break
                down = self._fetch_batch(chunk, out)
        rest = [r for r in unique if r not in out]
        out.update(each(self, [(r, r) for r in rest], self.fetch, down=down))
        return {r: out[r] for r in unique}

    def versions(self, requests: Sequence[Request]) -> dict[Request, VersionOutcome]:
        """The VersionId each request points at now: AWSCURRENT's, or its staging label's, from the
        same listing (one ListSecrets page per 100 secrets answers unpinned and label-pinned alike)."""
        unique = list(dict.fromkeys(requests))
        stages = self._stages([r.ref for r in unique])
        out: dict[Request, VersionOutcome] = {}
        for request in unique:
            found = stages[request.ref]
            if isinstance(found, ProviderError):
                out[request] = copy_error(found, provider=self.name, ref=request.ref, version=request.version)
            elif request.version is not None and not self.moves(request.version):
                out[request] = request.version  # a VersionId pin is its own answer
            else:
                label = _label(request.version or CURRENT)
                out[request] = _holder(found, label) or SecretNotFound(
                    f"no version has the staging label {label}", provider=self.name, ref=request.ref,
                    version=request.version)
        return out

    def _stages(self, refs: Sequence[str]) -> dict[str, dict[str, list[str]] | ProviderError]:
        """Each ref's versions-to-staging-labels map, from ListSecrets where cheaper, else DescribeSecret."""
        unique = list(dict.fromkeys(refs))
        out: dict[str, dict[str, list[str]] | ProviderError] = {}
        if len(unique) > self._list_pages and self.list_fallback.allowed():
            try:
                out.update(self._list_stages(unique))
                self.list_fallback.worked()
            except ActionDenied as exc:
                self.list_fallback.refused(exc)
            except ProviderError as exc:
                # Unavailable, or credentials that fail every call: the same answer for every ref.
                out.update(fan_out(exc, unique, Request, provider=self.name))
                return out
        described = each(self, [(ref, Request(ref)) for ref in unique if ref not in out],
                              lambda r: self._describe_stages(r.ref))
        out.update(described)
        return {ref: out[ref] for ref in unique}

    def _describe_stages(self, ref: str) -> dict[str, list[str]]:
        response = self._call("DescribeSecret", ref, None, {"SecretId": ref})
        if response.get("DeletedDate") is not None:
            raise SecretNotFound("DescribeSecret: secret is marked for deletion", provider=self.name, ref=ref)
        return dict(response.get("VersionIdsToStages") or {})

    def close(self) -> None:
        self._client.close()

    # -- batching ---------------------------------------------------------------------------

    def _fetch_batch(self, chunk: list[Request], out: dict[Request, Outcome]) -> Unavailable | None:
        """Fill `out` from one BatchGetSecretValue, for the items it answers; the rest are left to
        GetSecretValue. Returns the Unavailable that must stop further calls, if any.

        Only a refusal of the batch call itself (IAM denies the action) switches to one call per
        secret, until the next probe; an item the batch could not read is that item's error."""
        try:
            values, errors = self._batch_get([r.ref for r in chunk])
        except ActionDenied as exc:
            self.batch_fallback.refused(exc)
            return None
        except (Unavailable, AccessDenied) as exc:
            # down, or credentials every call would fail on: the same for each item
            out.update(fan_out(exc, chunk, lambda r: r, provider=self.name))
            return exc if isinstance(exc, Unavailable) else None
        except ProviderError:
            return None  # the batch as a whole was rejected (a malformed ref): each item says why alone
        self.batch_fallback.worked()
        by_key = {key: value for value in values for key in _keys_of(value)}
        for request in chunk:
            if request.ref in errors:
                item = errors[request.ref]
                out[request] = error_from_code(
                    str(item.get("ErrorCode", "")), str(item.get("Message", "")),
                    operation="BatchGetSecretValue", provider=self.name,
                    ref=request.ref, version=request.version,
                )
            elif request.ref in by_key:
                try:
                    out[request] = _fetched(by_key[request.ref], self.name, request)
                except ProviderError as exc:
                    out[request] = exc
        return None

    def _batch_get(self, ids: list[str]) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
        """The values and per-item errors of one BatchGetSecretValue, following NextToken."""
        values: list[dict[str, Any]] = []
        errors: dict[str, dict[str, Any]] = {}
        token: str | None = None
        for _ in range(len(ids)):  # NextToken only when a response is too large; bounded anyway
            params: dict[str, Any] = {"SecretIdList": ids}
            if token:
                params["NextToken"] = token
            response = self._call("BatchGetSecretValue", f"{len(ids)} secrets", None, params)
            values.extend(response.get("SecretValues", []))
            errors.update({str(e.get("SecretId")): e for e in response.get("Errors", [])})
            token = response.get("NextToken")
            if not token:
                break
        return values, errors

    def _list_stages(self, refs: list[str]) -> dict[str, dict[str, list[str]] | ProviderError]:
        """Page through ListSecrets until every ref is seen; unseen refs are left to DescribeSecret."""
        wanted = set(refs)
        found: dict[str, dict[str, list[str]] | ProviderError] = {}
        token: str | None = None
        pages = 0
        while True:
            params: dict[str, Any] = {"MaxResults": PAGE_SIZE}
            if token:
                params["NextToken"] = token
            response = self._call("ListSecrets", "", None, params)
            pages += 1
            for entry in response.get("SecretList", []):
                stages = dict(entry.get("SecretVersionsToStages") or {})
                if _holder(stages, CURRENT) is None:
                    continue  # left for DescribeSecret, which can say why
                for key in _keys_of(entry):
                    if key in wanted:
                        found[key] = stages
            token = response.get("NextToken")
            if not token or len(found) == len(wanted):
                break
        self._list_pages = pages if not token else max(pages, self._list_pages)
        return found

    # -- calls ------------------------------------------------------------------------------

    def _call(self, operation: str, ref: str, version: str | None, params: dict[str, Any]) -> dict[str, Any]:
        return self._client.call(operation, params, ref=ref, version=version)


def _fetched(response: dict[str, Any], provider: str, request: Request) -> Fetched:
    if response.get("SecretString") is not None:
        value = str(response["SecretString"]).encode("utf-8")
    elif response.get("SecretBinary") is not None:
        value = bytes(response["SecretBinary"])
    else:
        version = request.version
        raise SecretNotFound("version holds no value", provider=provider, ref=request.ref, version=version)
    return Fetched(value, str(response["VersionId"]))


def _label(version: str) -> str:
    """The AWS pin a configured version names: `previous` is AWSPREVIOUS, anything else itself."""
    return PREVIOUS_LABEL if version == PREVIOUS else version


def _holder(versions_to_stages: dict[str, list[str]], label: str) -> str | None:
    """The VersionId carrying `label`, if any."""
    return next((v for v, stages in versions_to_stages.items() if label in stages), None)


def _keys_of(entry: dict[str, Any]) -> Iterator[str]:
    """The refs that name this secret: its name, its ARN and the ARN without its random suffix."""
    for key in ("Name", "ARN"):
        if entry.get(key):
            yield str(entry[key])
    if entry.get("ARN"):
        yield _ARN_SUFFIX.sub("", str(entry["ARN"]))


def _chunks(items: list[Request], size: int) -> Iterator[list[Request]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
