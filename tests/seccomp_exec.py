#!/usr/bin/python3
"""Runs a command under a Docker seccomp profile (JSON), loaded by libseccomp.

    seccomp_exec.py PROFILE [--without NAME,NAME] [--caps CAP,CAP] -- COMMAND ARGS...

Reads the profile as Docker's engine does for a container with `caps` (default:
Docker's default capability set) on this machine's architecture: the default
action and errno; each rule's action, errno and argument conditions (ANDed);
a rule applies when its `includes` (arches, caps, minKernel) all hold and its
`excludes` do not. Names libseccomp does not know are skipped, as Docker skips
them. `--without` leaves those names out of every rule (to show what refusing
them does). Then loads the filter (with no_new_privs) and execs COMMAND: the
filter holds for it and everything it starts.

Debian's python3-seccomp, so run with the system /usr/bin/python3.
"""

import json
import os
import platform
import sys

import seccomp

# Docker's default capabilities (moby's oci/caps/defaults.go).
DOCKER_CAPS = (
    "CAP_CHOWN CAP_DAC_OVERRIDE CAP_FSETID CAP_FOWNER CAP_MKNOD CAP_NET_RAW CAP_SETGID "
    "CAP_SETUID CAP_SETFCAP CAP_SETPCAP CAP_NET_BIND_SERVICE CAP_SYS_CHROOT CAP_KILL CAP_AUDIT_WRITE"
).split()

# Go's names for this machine's architecture, as the profile's `arches` use them.
GO_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "s390x": "s390x", "riscv64": "riscv64"}

OPS = {
    "SCMP_CMP_NE": seccomp.NE,
    "SCMP_CMP_LT": seccomp.LT,
    "SCMP_CMP_LE": seccomp.LE,
    "SCMP_CMP_EQ": seccomp.EQ,
    "SCMP_CMP_GE": seccomp.GE,
    "SCMP_CMP_GT": seccomp.GT,
    "SCMP_CMP_MASKED_EQ": seccomp.MASKED_EQ,
}


def action(name, errno):
    if name == "SCMP_ACT_ALLOW":
        return seccomp.ALLOW
    if name == "SCMP_ACT_ERRNO":
        return seccomp.ERRNO(errno)
    if name == "SCMP_ACT_KILL":
        return seccomp.KILL
    if name == "SCMP_ACT_TRAP":
        return seccomp.TRAP
    raise SystemExit(f"seccomp_exec: action {name} is not handled here")


def kernel():
    return tuple(int(p) for p in platform.release().split("-")[0].split(".")[:2])


def applies(rule, arch, caps):
    inc, exc = rule.get("includes") or {}, rule.get("excludes") or {}
    if inc.get("arches") and arch not in inc["arches"]:
        return False
    if inc.get("caps") and not set(inc["caps"]) <= caps:
        return False
    if inc.get("minKernel") and kernel() < tuple(int(p) for p in inc["minKernel"].split(".")[:2]):
        return False
    if arch in (exc.get("arches") or []) or set(exc.get("caps") or []) & caps:
        return False
    return True


def build(profile, without, caps):
    arch = GO_ARCH.get(platform.machine(), platform.machine())
    f = seccomp.SyscallFilter(defaction=action(profile["defaultAction"], profile.get("defaultErrnoRet", 1)))
    added, unknown = 0, set()
    for rule in profile["syscalls"]:
        if not applies(rule, arch, caps):
            continue
        act = action(rule["action"], rule.get("errnoRet", 1))
        args = [seccomp.Arg(a["index"], OPS[a["op"]], a["value"], a.get("valueTwo", 0)) for a in rule.get("args") or []]
        for name in rule["names"]:
            if name in without:
                continue
            try:
                f.add_rule(act, name, *args)
                added += 1
            except (RuntimeError, ValueError, OSError):
                unknown.add(name)
    return f, added, unknown


def main(argv):
    if "--" not in argv:
        raise SystemExit(__doc__)
    opts, command = argv[: argv.index("--")], argv[argv.index("--") + 1 :]
    path, without, caps = opts[0], set(), set(DOCKER_CAPS)
    for flag, value in zip(opts[1::2], opts[2::2]):
        if flag == "--without":
            without = set(filter(None, value.split(",")))
        elif flag == "--caps":
            caps = set(filter(None, value.split(",")))
        else:
            raise SystemExit(f"seccomp_exec: unknown option {flag}")
    with open(path) as f:
        profile = json.load(f)
    filt, added, unknown = build(profile, without, caps)
    left_out = f", without {','.join(sorted(without))}" if without else ""
    print(
        f"seccomp_exec: {path}: {added} rules loaded{left_out}; {len(unknown)} names unknown to libseccomp skipped",
        file=sys.stderr,
    )
    filt.load()
    os.execvp(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
