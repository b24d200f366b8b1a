"""AWS Systems Manager Parameter Store provider (`type: aws-ssm`), batched.

- values: `GetParameters`, up to 10 names a call, SecureString decrypted (WithDecryption); a
  StringList is the text it is. A `ref` ending in `/` reads the whole path (`GetParametersByPath`,
  recursive, paginated) as one JSON object {name below the path: value}, so `files: "*"` writes one
  file per parameter (a nested name is a subfolder), `key:` picks one and a template sees the map;
- pins: `version: 3` (a version number: never moves) and `version: prod` (a label: moves), sent as
  `name:3` / `name:prod`;
- change check: the same `GetParameters` calls without decryption (no KMS call, no value used),
  reading the `Version` each answer carries; a path's version is a digest of its (name, version)
  pairs, from `GetParametersByPath` without decryption. Measured against `DescribeParameters` in
  bench/ssm_calls.py (docs/aws-ssm.md);
- a batch IAM refuses as a whole (one name outside the policy) or AWS rejects as malformed is asked
  again one name a call, so only the refused name fails, and that name is asked alone from then on
  (until a call of its own succeeds); every call is counted; botocore's retries
  are off, so the engine's backoff is the one place that retries; after a throttle or an outage a
  batch stops calling AWS.

It returns raw values; the core applies `key`, `encoding`, `format` and `files`. It never logs a
value, a token or a credential.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

from bridge.errors import AccessDenied, ProviderError, SecretNotFound, Unavailable
from bridge.provider import Capabilities, Fetched, Outcome, Provider, Request, VersionOutcome
from bridge.provider_rules import each, fan_out, first_unavailable
from providers._aws_calls import CREDENTIAL_ENV, SDK_LOGGERS, ActionDenied, AwsClient, AwsSettings

#: the service's limits: names per GetParameters call, parameters per GetParametersByPath page
BATCH_SIZE = 10
PAGE_SIZE = 10
#: a path read stops here (100,000 parameters): a runaway listing, not a set of files
MAX_PATH_PAGES = 10_000
_NUMBER = re.compile(r"^[0-9]+$")

#: one parameter as GetParameters / GetParametersByPath return it
Parameter = dict[str, Any]


class ParameterStoreSettings(AwsSettings):
    """`providers.<name>` for `type: aws-ssm`; credentials come from the standard chain."""

    type: str = "aws-ssm"


class ParameterStoreProvider(Provider):
    """`ref` is a parameter name (or ARN), or a path ending in `/`; `version` a version number or a
    label."""

    Settings = ParameterStoreSettings
    settings: ParameterStoreSettings
    capabilities = Capabilities(cheap_versions=True)
    sdk_loggers = SDK_LOGGERS
    credential_env = CREDENTIAL_ENV

    def __init__(self, name: str, settings: ParameterStoreSettings) -> None:
        super().__init__(name, settings)
        self._client = AwsClient(self, "ssm", settings)
        #: names whose own call was refused (IAM, or rejected as malformed): asked alone, so they do
        #: not fail a batch of 10 every cycle; a name leaves when a call of its own succeeds
        self._alone: set[str] = set()

    # -- the Provider interface -------------------------------------------------------------

    def fetch(self, request: Request) -> Fetched:
        outcome = self.fetch_many([request])[request]
        if isinstance(outcome, ProviderError):
            raise outcome
        return outcome

    def fetch_many(self, requests: Sequence[Request]) -> dict[Request, Outcome]:
        """Names in GetParameters batches of 10, then each path; stop calling on a throttle."""
        unique = list(dict.fromkeys(requests))
        fixed, names, paths = self._triage(unique)
        found = self._parameters(fixed + names, decrypt=True)
        out: dict[Request, Outcome] = {
            r: p if isinstance(p, ProviderError) else _fetched(p) for r, p in found.items()}
        out.update(each(self, [(r, r) for r in paths], self._fetch_path, down=first_unavailable(out.values())))
        return {r: out[r] for r in unique}

    def versions(self, requests: Sequence[Request]) -> dict[Request, VersionOutcome]:
        """The version each request points at now: the latest's or the label's `Version` from
        GetParameters without decryption (10 names a call); a version number is its own answer; a
        path's digest from GetParametersByPath without decryption."""
        unique = list(dict.fromkeys(requests))
        fixed, names, paths = self._triage(unique)
        out: dict[Request, VersionOutcome] = {}
        for request, found in self._parameters(names, decrypt=False).items():
            out[request] = found if isinstance(found, ProviderError) else str(found["Version"])
        out.update(each(self, [(r, r) for r in paths], self._path_check, down=first_unavailable(out.values())))
        # A version number is its own answer, unless AWS is down: then nothing was confirmed.
        down = first_unavailable(out.values())
        out.update(fan_out(down, fixed, _itself, provider=self.name) if down else {r: r.version for r in fixed})
        return {r: out[r] for r in unique}

    def moves(self, version: str) -> bool:
        """A label can be moved to another version; a version number never changes."""
        return not _NUMBER.match(version)

    def close(self) -> None:
        self._client.close()

    # -- names ------------------------------------------------------------------------------

    def _parameters(self, requests: Sequence[Request], *, decrypt: bool) -> dict[Request, Parameter | ProviderError]:
        """Each request's parameter from GetParameters, 10 a call; an error per item."""
        out: dict[Request, Parameter | ProviderError] = {}
        down: Unavailable | None = None
        for chunk in _batches(requests, alone=self._alone):
            if down is not None:
                out.update(fan_out(down, chunk, _itself, provider=self.name))
                continue
            try:
                out.update(self._get_parameters(chunk, decrypt=decrypt))
                self._alone.difference_update(_normal(r.ref) for r in chunk)
            except (Unavailable, AccessDenied, SecretNotFound) as exc:
                if isinstance(exc, ActionDenied | SecretNotFound) and len(chunk) > 1:
                    # One name IAM refuses (or AWS rejects) fails the whole call: ask each name alone.
                    out.update(each(self, [(r, r) for r in chunk], lambda r: self._get_alone(r, decrypt=decrypt)))
                    down = first_unavailable(out.values())
                else:
                    out.update(fan_out(exc, chunk, _itself, provider=self.name))
                    down = exc if isinstance(exc, Unavailable) else None
        return out

    def _get_alone(self, request: Request, *, decrypt: bool) -> Parameter | ProviderError:
        """One name in a call of its own; remembers whether it must stay alone."""
        try:
            found = self._get_parameters([request], decrypt=decrypt)[request]
        except (ActionDenied, SecretNotFound):
            self._alone.add(_normal(request.ref))
            raise
        self._alone.discard(_normal(request.ref))
        return found

    def _get_parameters(self, chunk: list[Request], *, decrypt: bool) -> dict[Request, Parameter | ProviderError]:
        """One GetParameters call; the chunk names each parameter once (see `_batches`), so an answer's
        Name or ARN says which request it is for. Raises when the call as a whole fails."""
        names = [_selector(r) for r in chunk]
        where = chunk[0].ref if len(chunk) == 1 else f"{len(chunk)} parameters"
        version = chunk[0].version if len(chunk) == 1 else None
        response = self._client.call("GetParameters", {"Names": names, "WithDecryption": decrypt},
                                     ref=where, version=version)
        answers = {_normal(str(p[key])): p for p in response.get("Parameters", []) for key in ("Name", "ARN")
                   if p.get(key)}
        out: dict[Request, Parameter | ProviderError] = {}
        for request in chunk:
            out[request] = answers.get(_normal(request.ref)) or self._missing(request)
        return out

    def _missing(self, request: Request) -> SecretNotFound:
        """A name GetParameters listed as invalid: no such parameter, version or label."""
        what = "parameter not found" if request.version is None else (
            "parameter or version not found" if not self.moves(request.version)
            else "parameter not found, or no version has this label")
        return SecretNotFound(f"GetParameters: {what}", provider=self.name, ref=request.ref, version=request.version)

    # -- paths ------------------------------------------------------------------------------

    def _fetch_path(self, request: Request) -> Fetched:
        found = self._read_path(request, decrypt=True)
        files = {_below(request.ref, str(p["Name"])): str(p.get("Value", "")) for p in found}
        value = json.dumps(files, sort_keys=True, ensure_ascii=False).encode("utf-8")
        return Fetched(value, _path_version(found), content_type="application/json")

    def _path_check(self, request: Request) -> str:
        return _path_version(self._read_path(request, decrypt=False))

    def _read_path(self, request: Request, *, decrypt: bool) -> list[Parameter]:
        """Every parameter below the path, all pages of GetParametersByPath (recursive)."""
        if request.version is not None:
            raise SecretNotFound("a path (a ref ending in /) has no versions: drop `version`",
                                 provider=self.name, ref=request.ref, version=request.version)
        params: dict[str, Any] = {"Path": request.ref.rstrip("/") or "/", "Recursive": True,
                                  "WithDecryption": decrypt, "MaxResults": PAGE_SIZE}
        found: list[Parameter] = []
        for _ in range(MAX_PATH_PAGES):
            response = self._client.call("GetParametersByPath", params, ref=request.ref, version=None)
            found.extend(response.get("Parameters", []))
            params["NextToken"] = response.get("NextToken")
            if not params["NextToken"]:
                break
        else:
            raise SecretNotFound(f"GetParametersByPath: more than {MAX_PATH_PAGES * PAGE_SIZE} parameters below "
                                 "this path", provider=self.name, ref=request.ref)
        if not found:
            raise SecretNotFound("GetParametersByPath: no parameters below this path",
                                 provider=self.name, ref=request.ref)
        return found

    def _triage(self, requests: list[Request]) -> tuple[list[Request], list[Request], list[Request]]:
        """(names pinned to a version number, other names, paths)."""
        fixed: list[Request] = []
        names: list[Request] = []
        paths: list[Request] = []
        for request in requests:
            if _is_path(request.ref):
                paths.append(request)
            elif request.version is not None and not self.moves(request.version):
                fixed.append(request)
            else:
                names.append(request)
        return fixed, names, paths


def _itself(request: Request) -> Request:
    return request


def _is_path(ref: str) -> bool:
    return ref.endswith("/")


def _normal(name: str) -> str:
    """A name as Parameter Store keeps it: a leading `/` counts only in a hierarchy (`/a` is `a`,
    `/a/b` is not `a/b`), so an answer for `a` is the one asked for as `/a`."""
    bare = name.removeprefix("/")
    return name if "/" in bare else bare


def _selector(request: Request) -> str:
    """The name GetParameters is asked for: `name`, `name:3` or `name:label`."""
    return request.ref if request.version is None else f"{request.ref}:{request.version}"


def _fetched(parameter: Parameter) -> Fetched:
    return Fetched(str(parameter.get("Value", "")).encode("utf-8"), str(parameter["Version"]))


def _below(path: str, name: str) -> str:
    """A parameter's name relative to the path it was read under: `/app/` + `/app/db/user` is `db/user`."""
    for prefix in (path, "/" + path.lstrip("/")):
        if name.startswith(prefix):
            return name[len(prefix):]
    return name.lstrip("/")


def _path_version(found: list[Parameter]) -> str:
    """A path's version: changes when any parameter below it is added, removed or given a new version."""
    pairs = sorted(f"{p['Name']}\t{p['Version']}" for p in found)
    return hashlib.sha256("\n".join(pairs).encode("utf-8")).hexdigest()[:20]


def _batches(requests: Sequence[Request], *, alone: set[str]) -> Iterator[list[Request]]:
    """Chunks of up to 10 requests, each naming a parameter at most once (`name` and `name:prod` go to
    different calls), since an answer carries the parameter's name but not always the selector asked;
    a name in `alone` is a chunk of its own."""
    rounds: list[list[Request]] = []
    seen: Counter[str] = Counter()
    for request in requests:
        name = _normal(request.ref)
        if name in alone:
            yield [request]
            continue
        index = seen[name]
        seen[name] += 1
        if index == len(rounds):
            rounds.append([])
        rounds[index].append(request)
    for group in rounds:
        for start in range(0, len(group), BATCH_SIZE):
            yield group[start : start + BATCH_SIZE]
