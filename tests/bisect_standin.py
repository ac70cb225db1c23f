"""The bisect's stand-ins: a llama-orch repository built by the tests, and a `cargo` that
builds it the way cargo would.

The repository has the real crate's shape (a workspace, `bin/llorch-candled` with the
`cpu`/`cuda`/`metal` features and one `[[bin]]` per backend, `bin/pool-ctl` beside it),
and the worker's behaviour depends on its tree: a line `// llorch-ref-faults: SPEC` in the
crate's sources turns the reference worker's fault switches on in the built binary, and a
`compile_error!` makes the build fail. The crate starts in `worker/` and moves to
`bin/llorch-candled/` a few commits in, so "the crate's directory at that commit" matters.

The stand-in `cargo build [--release] --features F --bin NAME` runs in the crate's directory
like cargo: it reads Cargo.toml (a missing feature or bin is an error), honours
CARGO_TARGET_DIR (else `target/` of the crate), writes `release/NAME` or `debug/NAME`,
prints cargo's lines and exits 101 on a build error. The binary is a small launcher that
runs the reference worker (`llorch_harness.lab.refworker`) with the tree's faults and the
persona of its backend. Test switches, from the environment only:
`STANDIN_CARGO_HOLD=DIR`: the build writes DIR/cargo.pid and DIR/rustc.pid (a child it
started, as cargo starts rustc) and then waits until it is killed;
`STANDIN_FLAKY_STATE=DIR`: the built worker refuses to start in every third gate session
(the 2nd, 5th, ...) of each commit: an item that fails one run in three.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

CARGO = r'''#!@PYTHON@
"""stand-in cargo (tests/bisect_standin.py)"""
LAUNCHER = @LAUNCHER@
import os, subprocess, sys, time, tomllib
from pathlib import Path

def fail(msg):
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(101)

args = sys.argv[1:]
if not args or args[0] != "build":
    fail(f"no such command: `{args[0] if args else ''}`")
release = "--release" in args
features = args[args.index("--features") + 1].split(",") if "--features" in args else []
bin_name = args[args.index("--bin") + 1] if "--bin" in args else None
crate = Path.cwd()
if not (crate / "Cargo.toml").is_file():
    fail(f"could not find `Cargo.toml` in `{crate}` or any parent directory")
doc = tomllib.loads((crate / "Cargo.toml").read_text())
name = doc.get("package", {}).get("name", "?")
for f in features:
    if f not in doc.get("features", {}):
        fail(f"Package `{name} v0.1.0 ({crate})` does not have the feature `{f}`")
bins = [b["name"] for b in doc.get("bin", [])]
if bin_name not in bins:
    fail(f"no bin target named `{bin_name}`.\n\nAvailable bin targets:\n    " + "\n    ".join(bins))
print(f"   Compiling {name} v0.1.0 ({crate})", file=sys.stderr, flush=True)
hold = os.environ.get("STANDIN_CARGO_HOLD")
if hold:
    rustc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    Path(hold, "rustc.pid").write_text(str(rustc.pid))
    Path(hold, "cargo.pid").write_text(str(os.getpid()))
    while True:
        time.sleep(0.1)
sources = sorted((crate / "src").rglob("*.rs"))
faults = []
for src in sources:
    for n, line in enumerate(src.read_text().splitlines(), 1):
        if "compile_error!" in line:
            rel = src.relative_to(crate)
            print(f"error: {line.strip()}\n --> {rel}:{n}:1", file=sys.stderr)
            print(f"error: could not compile `{name}` (bin \"{bin_name}\") due to 1 "
                  "previous error", file=sys.stderr)
            sys.exit(101)
        if line.strip().startswith("// llorch-ref-faults:"):
            faults.append(line.split(":", 1)[1].strip())
commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                        cwd=crate).stdout.strip() or "unknown"
backend = bin_name.split("-")[1]
target = Path(os.environ.get("CARGO_TARGET_DIR") or crate / "target")
out = target / ("release" if release else "debug") / bin_name
out.parent.mkdir(parents=True, exist_ok=True)
tmp = out.with_suffix(".tmp")
tmp.write_text(LAUNCHER.format(python=sys.executable, faults=",".join(faults),
                               commit=commit, backend=backend))
tmp.chmod(0o755)
tmp.replace(out)
profile = "release" if release else "dev"
print(f"    Finished `{profile}` profile [optimized] target(s) in 0.01s", file=sys.stderr)
'''

LAUNCHER = r"""#!{python}
import os, sys
FAULTS = {faults!r}
COMMIT = {commit!r}
state = os.environ.get("STANDIN_FLAKY_STATE")
session = os.environ.get("LLORCH_HARNESS_SESSION", "")
if state and session:
    path = os.path.join(state, COMMIT + ".sessions")
    seen = open(path).read().split() if os.path.exists(path) else []
    if session not in seen:
        seen.append(session)
        open(path, "w").write("\n".join(seen))
    if (seen.index(session) + 1) % 3 == 2:
        print("Error: stand-in flaky start (one gate session in three)", file=sys.stderr)
        sys.exit(1)
os.environ["LLORCH_REF_BACKEND"] = {backend!r}
if FAULTS:
    os.environ["LLORCH_REF_FAULTS"] = FAULTS
else:
    os.environ.pop("LLORCH_REF_FAULTS", None)
os.execv({python!r}, [{python!r}, "-m", "llorch_harness.lab.refworker", *sys.argv[1:]])
"""


def install_cargo(bin_dir: Path) -> Path:
    """The stand-in `cargo` in bin_dir (put bin_dir first on PATH)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    path = bin_dir / "cargo"
    path.write_text(CARGO.replace("@PYTHON@", sys.executable)
                    .replace("@LAUNCHER@", repr(LAUNCHER)))
    path.chmod(0o755)
    return path


# --------------------------------------------------------------------------- the repository

WORKSPACE = '[workspace]\nresolver = "2"\nmembers = ["{crate}", "bin/pool-ctl"]\n'
CRATE_TOML = """[package]
name = "llorch-candled"
version = "0.1.0"
edition = "2021"

[features]
default = ["cpu"]
cpu = []
cuda = []
metal = []

[[bin]]
name = "llorch-cpu-candled"
path = "src/bin/cpu.rs"

[[bin]]
name = "llorch-cuda-candled"
path = "src/bin/cuda.rs"
required-features = ["cuda"]

[[bin]]
name = "llorch-metal-candled"
path = "src/bin/metal.rs"
required-features = ["metal"]
"""
POOL_CTL_TOML = '[package]\nname = "pool-ctl"\nversion = "0.1.0"\nedition = "2021"\n'
INFERENCE_RS = "// TEAM-017: the generation loop\npub fn generate() {}\n"
MAIN_RS = "// TEAM-017: the worker's entry\nfn main() {}\n"
BASE_DATE = 1764000000  # fixed author and committer dates: the same shas on every run


def _git(repo: Path, *args: str, when: int = 0) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    stamp = f"@{BASE_DATE + when * 3600} +0000"
    env.update(GIT_AUTHOR_NAME="Ada Dev", GIT_AUTHOR_EMAIL="ada@example.org",
               GIT_COMMITTER_NAME="Ada Dev", GIT_COMMITTER_EMAIL="ada@example.org",
               GIT_AUTHOR_DATE=stamp, GIT_COMMITTER_DATE=stamp, GIT_CONFIG_NOSYSTEM="1",
               HOME=str(repo.parent))
    res = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                         env=env, check=True)
    return res.stdout.strip()


def _write(repo: Path, rel: str, text: str) -> None:
    path = repo / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _commit(repo: Path, subject: str, when: int) -> str:
    _git(repo, "add", "-A", when=when)
    _git(repo, "commit", "-q", "-m", subject, when=when)
    return _git(repo, "rev-parse", "HEAD")


def build_repo(repo: Path, n: int = 24, *, faults: dict[int, str] | None = None,
               broken: set[int] | None = None, merge_at: int | None = None,
               merge_fault: str | None = None, move_at: int = 4,
               subjects: dict[int, str] | None = None) -> tuple[list[str], list[str]]:
    """A llama-orch stand-in with `n` commits on main's first-parent path (the first is the
    root). `faults[i]`: commit i adds that fault line (it stays); `broken`: commit i does not
    compile (the next one fixes it); `merge_at`: commit i merges a two-commit side branch
    whose second commit adds `merge_fault`. Returns (main's commits, the side branch's)."""
    faults, broken, subjects = faults or {}, broken or set(), subjects or {}
    repo.mkdir(parents=True)
    _git(repo, "init", "-q", "-b", "main")
    crate = "worker"
    _write(repo, "Cargo.toml", WORKSPACE.format(crate=crate))
    _write(repo, f"{crate}/Cargo.toml", CRATE_TOML)
    for b in ("cpu", "cuda", "metal"):
        _write(repo, f"{crate}/src/bin/{b}.rs", f"// TEAM-017: the {b} binary\nfn main() {{}}\n")
    _write(repo, f"{crate}/src/main.rs", MAIN_RS)
    _write(repo, f"{crate}/src/backend/inference.rs", INFERENCE_RS)
    _write(repo, "bin/pool-ctl/Cargo.toml", POOL_CTL_TOML)
    _write(repo, "bin/pool-ctl/src/main.rs", "fn main() {}\n")
    _write(repo, "README.md", "# llama-orch (stand-in)\n")
    main = [_commit(repo, "Initial import of the worker crate", 0)]
    side: list[str] = []
    for i in range(1, n):
        if i == move_at:
            _git(repo, "mv", crate, "bin/llorch-candled")
            crate = "bin/llorch-candled"
            _write(repo, "Cargo.toml", WORKSPACE.format(crate=crate))
            main.append(_commit(repo, subjects.get(i, "Move the worker crate to bin/"), i))
            continue
        if i == merge_at:
            side = _side_branch(repo, crate, merge_fault, i)
            _git(repo, "merge", "-q", "--no-ff", "-m",
                 subjects.get(i, "Merge branch 'kernel-tuning'"), "kernel-tuning", when=i)
            main.append(_git(repo, "rev-parse", "HEAD"))
            continue
        main.append(_commit(repo, subjects.get(i, _change(repo, crate, i, faults, broken)), i))
    _git(repo, "branch", "-q", "-D", "kernel-tuning") if side else None
    return main, side


def _change(repo: Path, crate: str, i: int, faults: dict[int, str], broken: set[int]) -> str:
    """Commit i's change to the tree; its default subject."""
    main_rs = repo / crate / "src/main.rs"
    if i in faults:
        path = repo / crate / "src/backend/inference.rs"
        path.write_text(path.read_text() + f"// llorch-ref-faults: {faults[i]}\n"
                        f"pub fn step_{i}() {{}}\n")
        return f"inference: rework step {i}"
    if i in broken:
        main_rs.write_text(main_rs.read_text() + 'compile_error!("half-done refactor");\n')
        return f"worker: start refactor {i}"
    if "compile_error!" in main_rs.read_text():
        main_rs.write_text(MAIN_RS)
        return f"worker: finish refactor {i}"
    _write(repo, "docs/notes.md", "".join(f"note {k}\n" for k in range(1, i + 1)))
    return f"docs: note {i}"


def _side_branch(repo: Path, crate: str, fault: str | None, when: int) -> list[str]:
    _git(repo, "checkout", "-q", "-b", "kernel-tuning")
    _write(repo, "docs/kernels.md", "kernel notes\n")
    first = _commit(repo, "kernels: notes", when)
    path = repo / crate / "src/backend/kernels.rs"
    path.write_text(f"// llorch-ref-faults: {fault}\npub fn tuned() {{}}\n" if fault else
                    "pub fn tuned() {}\n")
    second = _commit(repo, "kernels: tune the decode loop", when)
    _git(repo, "checkout", "-q", "main")
    return [first, second]


def snapshot(repo: Path) -> dict[str, tuple[int, bytes]]:
    """Every file and link of the checkout, .git included, with its mode and bytes."""
    out: dict[str, tuple[int, bytes]] = {}
    for dirpath, dirnames, filenames in os.walk(repo):
        for name in [*filenames, *dirnames]:
            path = Path(dirpath, name)
            st = path.lstat()
            rel = path.relative_to(repo).as_posix()
            if path.is_symlink():
                out[rel] = (st.st_mode, os.readlink(path).encode())
            elif path.is_file():
                out[rel] = (st.st_mode, path.read_bytes())
            else:
                out[rel + "/"] = (st.st_mode, b"")
    return out
