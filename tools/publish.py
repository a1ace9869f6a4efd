#!/usr/bin/env python3
"""Publish the built variants to the Hub: build/<variant>/ -> branch v<version>.

    python tools/publish.py                       # real Hub, HTTP API (huggingface_hub)
    python tools/publish.py --dry-run             # validate and show the plan only
    python tools/publish.py --git-remote PATH_OR_URL   # git push (test servers, mirrors)
    python tools/publish.py --transport git       # git push to $HF_ENDPOINT/kernels/<repo-id>

What goes where (the layout kernel-builder's build-and-upload produces and
the kernels loader reads):

    branch v<version>   build/<variant>/...   every variant under --build-dir;
                        variants already on the branch that are not being
                        published stay; anything outside build/ is removed
                        (a version branch holds builds only, which also keeps
                        `kernels download` + `load_kernel` working)
                        --benchmarks: also benchmarks/benchmark*.py, as
                        kernel-builder's upload puts them there for
                        `kernels benchmark ORG/NAME@v<version>`
    branch main         README.md             CARD.md of the kernel dir

The repository is general.hub.repo-id of build.toml (--repo-id overrides),
the version is general.version. The Hub is the one huggingface_hub is set
up for: HF_ENDPOINT (default https://huggingface.co) and the token from
HF_TOKEN or `hf auth login`.

Nothing is published unless every variant passes:
  * metadata.json parses with kernels' own parser (kernels._rust.Metadata),
    has this kernel's name and version, and a backend matching the variant
    name; the library <id>.abi3.so and __init__.py are present;
  * its digest matches the files, recomputed by kernels
    (kernels._rust.Digest.hash_variant) - the check `kernels verify-signature`
    applies after the signature;
  * every .so passes kernel-abi-check: manylinux_2_28 and abi3 (Python 3.9).
Bytecode (__pycache__, *.pyc) is never published.

Two transports, one plan:
  * hub (default): HfApi.create_repo / create_branch / create_commit. This is
    what the real Hub wants: binaries go through its large-file storage, no
    git-lfs setup is needed, and kernel repos (repo type "kernel") are
    created on demand.
  * git: commits made locally and pushed (non-force) to a git remote. Hub
    mirrors and test servers such as olah serve git repositories read-only
    and accept no HTTP uploads, so publishing there is a push into the bare
    repository they serve. --git-remote takes a URL or a local path (a
    missing local bare repository is created); without it the remote is
    $HF_ENDPOINT/kernels/<repo-id>, authenticated with the Hub token in an
    HTTP header (never in the URL). The real Hub accepts git pushes too,
    but rejects binaries over 10 MB that are not in git-lfs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MANYLINUX = "manylinux_2_28"
PYTHON_ABI = "3.9"
BYTECODE_DIRS = {"__pycache__"}
BYTECODE_SUFFIXES = {".pyc", ".pyo"}


def log(msg: str) -> None:
    print(f"[publish] {msg}", file=sys.stderr, flush=True)


class PublishError(Exception):
    pass


# --------------------------------------------------------------------------
# What to publish


@dataclass
class Kernel:
    name: str
    version: int
    repo_id: str
    card: Path | None
    benchmarks: dict[str, Path] = field(default_factory=dict)  # repo path -> file

    @property
    def branch(self) -> str:
        return f"v{self.version}"


def read_kernel(kernel_dir: Path, repo_id: str | None) -> Kernel:
    toml_path = kernel_dir / "build.toml"
    if not toml_path.is_file():
        raise PublishError(f"{toml_path} not found (--kernel-dir is the folder holding build.toml)")
    general = tomllib.loads(toml_path.read_text())["general"]
    repo = repo_id or general.get("hub", {}).get("repo-id")
    if not repo or repo.count("/") != 1:
        raise PublishError("no repository: set general.hub.repo-id in build.toml or pass --repo-id ORG/NAME")
    version = general.get("version")
    if not isinstance(version, int) or version < 1:
        raise PublishError(f"build.toml general.version must be a positive integer, got {version!r}")
    card = kernel_dir / "CARD.md"
    return Kernel(general["name"], version, repo, card if card.is_file() else None)


@dataclass
class Variant:
    name: str
    source: Path  # the folder under --build-dir
    staged: Path  # bytecode-free copy that is validated and published
    problems: list[str] = field(default_factory=list)

    def files(self) -> dict[str, Path]:
        """repo path -> local file, for every file of the staged copy."""
        return {
            f"build/{self.name}/{p.relative_to(self.staged).as_posix()}": p
            for p in sorted(self.staged.rglob("*"))
            if p.is_file()
        }


def is_bytecode(rel: Path) -> bool:
    return bool(BYTECODE_DIRS.intersection(rel.parts)) or rel.suffix in BYTECODE_SUFFIXES


def stage(source: Path, dest: Path) -> None:
    for path in sorted(source.rglob("*")):
        rel = path.relative_to(source)
        if is_bytecode(rel) or path.is_dir():
            continue
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, dest / rel)  # links (e.g. into a Nix store) are published as files


def discover(build_dir: Path, only: list[str] | None, staging: Path) -> list[Variant]:
    if not build_dir.is_dir():
        raise PublishError(f"build directory {build_dir} does not exist; build first (tools/build_variant.py)")
    names = sorted(p.name for p in build_dir.iterdir() if p.is_dir() and (p / "metadata.json").is_file())
    if only:
        missing = sorted(set(only) - set(names))
        if missing:
            raise PublishError(f"no such variant(s) in {build_dir}: {', '.join(missing)}")
        names = [n for n in names if n in only]
    if not names:
        raise PublishError(f"no variants (folders with metadata.json) in {build_dir}")
    variants = []
    for name in names:
        v = Variant(name, build_dir / name, staging / name)
        stage(v.source, v.staged)
        variants.append(v)
    return variants


# --------------------------------------------------------------------------
# Validation: kernels' own parser and digest, kernel-abi-check


def variant_facts(variant: str) -> tuple[str, str | None]:
    """(backend, os) that the loader reads from a variant name."""
    try:  # a public module up to kernels 0.18, internal from 0.19
        from kernels.variants import ArchVariant, parse_variant
    except ModuleNotFoundError:
        from kernels._internals.variants import ArchVariant, parse_variant

    parsed = parse_variant(variant)  # ValueError for names the loader cannot read
    old = getattr(parsed, "arch", None)  # kernels <= 0.18 kept backend and os there
    if isinstance(parsed, ArchVariant):
        backend, os_name = (old.backend, old.os) if old else (parsed.backend, parsed.system.os)
        return type(backend).__name__.lower(), os_name
    return (old or parsed.backend).backend_name.lower(), None


def validate_variant(v: Variant, kernel: Kernel) -> None:
    from kernels._rust import Digest, DigestValidationError, Metadata

    try:
        want, os_name = variant_facts(v.name)
    except ValueError as e:
        v.problems.append(f"variant name is not one the loader understands: {e}")
        return
    try:
        meta = Metadata.read_from_file(v.staged / "metadata.json")
    except ValueError as e:
        v.problems.append(f"metadata.json rejected by kernels' parser: {e}")
        return

    if str(meta.name) != kernel.name:
        v.problems.append(f"metadata name {str(meta.name)!r} != build.toml name {kernel.name!r}")
    if meta.version != kernel.version:
        v.problems.append(
            f"metadata version {meta.version} != build.toml version {kernel.version} "
            f"(it would land on branch {kernel.branch})"
        )
    got = str(meta.backend.backend_type).split(".")[-1].lower()
    if got != want:
        v.problems.append(f"metadata backend {got!r} does not match the variant name ({want!r})")
    if got in ("cuda", "rocm") and not meta.backend.archs:
        v.problems.append(f"metadata backend {got!r} lists no archs")
    if not (v.staged / "__init__.py").is_file():
        v.problems.append("no __init__.py at the top of the variant")
    libs = sorted(p.name for p in v.staged.rglob("*.so"))
    if os_name is not None and libs != [f"{meta.id}.abi3.so"]:  # (noarch builds have none)
        v.problems.append(f"expected exactly one library {meta.id}.abi3.so, found {libs or 'none'}")

    if meta.digest is None:
        v.problems.append("metadata.json has no digest")
    else:
        actual = Digest.hash_variant(meta.digest.algorithm, v.staged)
        try:
            meta.digest.validate(actual)
        except DigestValidationError as e:
            v.problems += [f"digest: {violation}" for violation in e.violations]

    for so in sorted(v.staged.rglob("*.so")):
        v.problems += [f"ABI {so.name}: {p}" for p in abi_problems(so, linux=os_name == "linux")]


def abi_problems(so: Path, linux: bool) -> list[str]:
    from kernel_abi_check import ObjectFile  # PyPI: kernel-abi-check

    obj = ObjectFile(str(so))
    problems = [str(p) for p in obj.check_python_abi(PYTHON_ABI)]
    if linux:
        problems += [str(p) for p in obj.check_manylinux(MANYLINUX)]
    return problems


# --------------------------------------------------------------------------
# The plan: which files a branch gets and loses


@dataclass
class Plan:
    branch: str
    adds: dict[str, Path]  # repo path -> local file
    deletes: list[str]


def benchmark_files(kernel_dir: Path) -> dict[str, Path]:
    """What kernel-builder's upload takes from benchmarks/: its benchmark*.py files."""
    folder = kernel_dir / "benchmarks"
    return {f"benchmarks/{p.name}": p for p in sorted(folder.glob("benchmark*.py")) if p.is_file()}


def plan_version_branch(kernel: Kernel, variants: list[Variant], existing: list[str]) -> Plan:
    adds: dict[str, Path] = dict(kernel.benchmarks)
    for v in variants:
        adds.update(v.files())
    replaced = tuple(f"build/{v.name}/" for v in variants)
    deletes = [
        f for f in existing
        if f not in adds and (not f.startswith("build/") or f.startswith(replaced))
    ]
    return Plan(kernel.branch, adds, sorted(deletes))


def plan_main_branch(kernel: Kernel) -> Plan | None:
    if kernel.card is None:
        return None
    return Plan("main", {"README.md": kernel.card}, [])


# --------------------------------------------------------------------------
# Transport 1: the Hub's HTTP API


def publish_hub(kernel: Kernel, variants: list[Variant], message: str, dry_run: bool) -> None:
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi

    api = HfApi()
    log(f"Hub {api.endpoint}, repository {kernel.repo_id} (type kernel)")
    if dry_run:
        plans = [plan_version_branch(kernel, variants, []), plan_main_branch(kernel)]
        show([p for p in plans if p])
        return
    api.create_repo(kernel.repo_id, repo_type="kernel", exist_ok=True)
    branches = {b.name for b in api.list_repo_refs(kernel.repo_id, repo_type="kernel").branches}

    main = plan_main_branch(kernel)
    if main is not None:
        # main first: a new version branch starts from main's head.
        api.create_commit(
            kernel.repo_id, repo_type="kernel", revision="main", commit_message=message,
            operations=[CommitOperationAdd(path_in_repo=p, path_or_fileobj=str(f)) for p, f in main.adds.items()],
        )
        branches.add("main")
    if kernel.branch not in branches:
        api.create_branch(kernel.repo_id, repo_type="kernel", branch=kernel.branch)
    existing = api.list_repo_files(kernel.repo_id, repo_type="kernel", revision=kernel.branch)
    plan = plan_version_branch(kernel, variants, list(existing))
    show([plan] + ([main] if main else []))
    operations = [CommitOperationDelete(path_in_repo=p) for p in plan.deletes]
    operations += [CommitOperationAdd(path_in_repo=p, path_or_fileobj=str(f)) for p, f in plan.adds.items()]
    info = api.create_commit(kernel.repo_id, repo_type="kernel", revision=plan.branch,
                             commit_message=message, operations=operations)
    log(f"{plan.branch} -> {getattr(info, 'oid', info)}")


# --------------------------------------------------------------------------
# Transport 2: git push


def git_remote_from_endpoint(repo_id: str) -> str:
    from huggingface_hub import constants

    return f"{constants.ENDPOINT.rstrip('/')}/kernels/{repo_id}"


def is_local(remote: str) -> bool:
    return "://" not in remote and not (":" in remote.split("/")[0])  # not URL, not scp-like


def git_env(remote: str) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("GIT_TERMINAL_PROMPT", "0")
    if remote.startswith(("http://", "https://")):
        from huggingface_hub import get_token

        token = get_token()
        if token:
            # In the environment, not in the URL or argv (both are visible to other users).
            n = int(env.get("GIT_CONFIG_COUNT", "0"))
            env["GIT_CONFIG_COUNT"] = str(n + 1)
            env[f"GIT_CONFIG_KEY_{n}"] = "http.extraHeader"
            env[f"GIT_CONFIG_VALUE_{n}"] = f"Authorization: Bearer {token}"
    return env


class Git:
    def __init__(self, work: Path, env: dict[str, str]):
        self.work, self.env = work, env

    def __call__(self, *args: str, check: bool = True) -> str:
        r = subprocess.run(["git", *args], cwd=self.work, env=self.env, capture_output=True, text=True)
        if check and r.returncode != 0:
            raise PublishError(f"git {' '.join(args[:2])} failed:\n{r.stderr.strip()}")
        return r.stdout.strip()


def publish_git(kernel: Kernel, variants: list[Variant], remote: str, message: str,
                dry_run: bool, workdir: Path) -> None:
    if is_local(remote):
        remote = str(Path(remote).resolve())
        if not Path(remote).exists():
            if dry_run:
                log(f"would create bare repository {remote}")
            else:
                Path(remote).parent.mkdir(parents=True, exist_ok=True)
                subprocess.run(["git", "init", "-q", "--bare", "-b", "main", remote], check=True)
                log(f"created bare repository {remote}")
    log(f"git remote {remote}")
    work = workdir / "git"
    work.mkdir()
    git = Git(work, git_env(remote))
    git("init", "-q")
    git("remote", "add", "origin", remote)
    heads = {}
    if not (is_local(remote) and not Path(remote).exists()):  # (dry run of a new local repo)
        for line in git("ls-remote", "--heads", "origin").splitlines():
            sha, ref = line.split()
            heads[ref.removeprefix("refs/heads/")] = sha
    if not git("config", "user.email", check=False):
        git("config", "user.name", "causal-conv1d publisher")
        git("config", "user.email", "publish@localhost")

    plans = []
    refspecs = []
    for branch, make_plan in ((kernel.branch, lambda existing: plan_version_branch(kernel, variants, existing)),
                              ("main", lambda existing: plan_main_branch(kernel))):
        local = f"publish-{branch}"
        if branch in heads:
            git("fetch", "-q", "origin", f"refs/heads/{branch}:refs/remotes/origin/{branch}")
            git("checkout", "-q", "-f", "-B", local, f"origin/{branch}")
            existing = git("ls-files").splitlines()
        else:
            git("switch", "-q", "-f", "--orphan", local)
            existing = []
        plan = make_plan(existing)
        if plan is None:
            continue
        plans.append(plan)
        for path in plan.deletes:
            (work / path).unlink()
        for path, src in plan.adds.items():
            (work / path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, work / path)
        git("add", "-A", "-f", ".")  # -f: a global gitignore must not drop *.so
        if git("status", "--porcelain"):
            git("commit", "-q", "-m", message)
            refspecs.append(f"{local}:refs/heads/{branch}")
        else:
            log(f"{branch}: nothing changed")
    show(plans)
    if dry_run or not refspecs:
        return
    # Not forced: if someone published in between, the push is refused.
    git("push", "-q", "origin", *refspecs)
    for spec in refspecs:
        local, ref = spec.split(":")
        log(f"{ref.removeprefix('refs/heads/')} -> {git('rev-parse', local)}")


def show(plans: list[Plan]) -> None:
    for plan in plans:
        variants = sorted({p.split("/")[1] for p in plan.adds if p.startswith("build/")})
        others = sorted(p for p in plan.adds if not p.startswith("build/"))
        what = ", ".join(variants + others)
        log(f"{plan.branch}: {len(plan.adds)} file(s) ({what}); {len(plan.deletes)} removed")


# --------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kernel-dir", type=Path, default=ROOT, help="folder with build.toml and CARD.md (default: this repository)")
    ap.add_argument("--build-dir", type=Path, help="folder of built variants (default: <kernel-dir>/build)")
    ap.add_argument("--repo-id", help="override general.hub.repo-id of build.toml")
    ap.add_argument("--variant", action="append", help="publish only this variant (repeatable)")
    ap.add_argument("--transport", choices=["hub", "git"], help="hub (HTTP API, default) or git (push)")
    ap.add_argument("--git-remote", help="git URL or local path to push to (implies --transport git)")
    ap.add_argument("--message", "-m", help="commit message")
    ap.add_argument("--dry-run", action="store_true", help="validate and show the plan; publish nothing")
    ap.add_argument("--benchmarks", action="store_true",
                    help="also publish benchmarks/benchmark*.py on the version branch, as kernel-builder's "
                         "upload does (for `kernels benchmark`). Off by default: with kernels 0.17.2 and "
                         "huggingface_hub 2.x, load_kernel refuses a snapshot from `kernels download` when "
                         "the branch holds files outside build/")
    args = ap.parse_args(argv)

    transport = args.transport or ("git" if args.git_remote else "hub")
    if args.git_remote and transport != "git":
        ap.error("--git-remote needs --transport git")
    try:
        kernel = read_kernel(args.kernel_dir.resolve(), args.repo_id)
        if args.benchmarks:
            kernel.benchmarks = benchmark_files(args.kernel_dir.resolve())
            if not kernel.benchmarks:
                raise PublishError(f"--benchmarks: no benchmarks/benchmark*.py in {args.kernel_dir}")
        build_dir = (args.build_dir or args.kernel_dir / "build").resolve()
        with tempfile.TemporaryDirectory(prefix="publish-") as tmp:
            tmp = Path(tmp)
            variants = discover(build_dir, args.variant, tmp / "staged")
            for v in variants:
                validate_variant(v, kernel)
            bad = [v for v in variants if v.problems]
            for v in variants:
                log(f"{v.name}: {'REFUSED' if v.problems else 'ok'}")
                for p in v.problems:
                    log(f"    {p}")
            if bad:
                raise PublishError(f"{len(bad)} of {len(variants)} variant(s) failed validation; nothing published")
            if kernel.card is None:
                log("no CARD.md in the kernel dir: main's README.md is left as it is")
            message = args.message or f"{kernel.name} v{kernel.version}: {', '.join(v.name for v in variants)}"
            log(f"{kernel.repo_id} branch {kernel.branch}: {len(variants)} variant(s)")
            if transport == "hub":
                publish_hub(kernel, variants, message, args.dry_run)
            else:
                remote = args.git_remote or git_remote_from_endpoint(kernel.repo_id)
                publish_git(kernel, variants, remote, message, args.dry_run, tmp)
    except PublishError as e:
        log(f"error: {e}")
        return 1
    log("dry run: nothing published" if args.dry_run else "done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
