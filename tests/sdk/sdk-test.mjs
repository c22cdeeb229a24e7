#!/usr/bin/env node
// sdk-test.mjs: drive kilnd with the real @deno/sandbox SDK (0.13.2, from
// npm) the way a user program would, and print TAP. tests/integration/sdk.sh
// runs it against a kilnd with real Debian guests; by hand:
//
//   cd tests/sdk && npm ci
//   DENO_SANDBOX_ENDPOINT=http://127.0.0.1:PORT DENO_DEPLOY_ENDPOINT=http://127.0.0.1:PORT \
//   DENO_DEPLOY_TOKEN=ddo_... node tests/sdk/sdk-test.mjs [substring...]
//
// Arguments select the checks whose names contain one of them; --list prints
// the names. Every check has its own timeout and a failure never stops the
// others; the final "cleanup" check (always run) kills every sandbox this run
// created. Exit status: 0 if every check passed, 1 otherwise, 2 on bad usage.
//
// Knobs (seconds unless said): SDK_TEST_TIMEOUT (one check, 120),
// SDK_TEST_CREATE_TIMEOUT (a shared sandbox's create, 600: the first create
// boots a template under software emulation), SDK_TEST_DEADLINE (the whole
// run; checks not started by then fail at once, 3600), SDK_TEST_CONNECTS
// (sockets in the concurrency check, 100).
//
// Only the SDK's public exports are used, plus the `ws` package the SDK itself
// depends on for the hostile raw-socket checks.

import { createHash, randomBytes } from "node:crypto";
import fsp from "node:fs/promises";
import { createRequire } from "node:module";
import os from "node:os";
import path from "node:path";
import process from "node:process";
import {
	Client,
	ConnectionEstablishmentError,
	InvalidMemoryError,
	InvalidTokenError,
	Sandbox,
	SandboxCommandError,
	SeekMode,
} from "@deno/sandbox";

// The same `ws` the SDK loads (resolved from the SDK's own directory).
const requireFromSdk = createRequire(createRequire(import.meta.url).resolve("@deno/sandbox"));
const WebSocket = requireFromSdk("ws");

const secs = (name, dflt) => {
	const v = Number(process.env[name] ?? dflt);
	return (Number.isFinite(v) && v > 0 ? v : dflt) * 1000;
};
const CHECK_MS = secs("SDK_TEST_TIMEOUT", 120);
const CREATE_MS = secs("SDK_TEST_CREATE_TIMEOUT", 600);
const DEADLINE = Date.now() + secs("SDK_TEST_DEADLINE", 3600);
const NCONNECT = Math.max(1, Math.floor(Number(process.env.SDK_TEST_CONNECTS ?? 100)) || 100);

const ENDPOINT = process.env.DENO_SANDBOX_ENDPOINT;
const TOKEN = process.env.DENO_DEPLOY_TOKEN;
// Everything here goes to this run's labels, file paths and names.
const RUN = `${Date.now().toString(36)}${randomBytes(3).toString("hex")}`;
const LABELS = { suite: "kiln-sdk", run: RUN };
const ROOT = `/tmp/kiln-sdk-${RUN}`; // in the guest: every fs check works under it
const GREETING = "hello from env";
const SBX_ID = /^sbx_[a-z]{3}_[0-9a-hjkmnp-z]{20}$/;

// ---- small helpers -----------------------------------------------------------

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const enc = (s) => new TextEncoder().encode(s);
const dec = (b) => new TextDecoder().decode(b);
const sha256 = (b) => createHash("sha256").update(b).digest("hex");
const fmt = (v) => {
	if (v instanceof Date) return `Date(${isNaN(v) ? "invalid" : v.toISOString()})`;
	if (v instanceof Uint8Array) return `<${v.length} bytes>`;
	try {
		const s = JSON.stringify(v);
		return s === undefined ? String(v) : s.length > 200 ? `${s.slice(0, 200)}...` : s;
	} catch {
		return String(v);
	}
};
// why(err): one line naming the error's class, code and message.
function why(e) {
	if (!(e instanceof Error)) return `thrown ${fmt(e)}`;
	const cls = e.constructor?.name ?? e.name;
	const code = e.code !== undefined ? ` (code ${fmt(e.code)}${e.status !== undefined ? `, status ${e.status}` : ""})` : "";
	return `${cls}${code}: ${e.message}`.replace(/\s*\n\s*/g, " | ").slice(0, 500);
}
class CheckFailed extends Error {}
function assert(cond, msg) {
	if (!cond) throw new CheckFailed(msg);
}
function eq(got, want, what) {
	const same = got instanceof Uint8Array && want instanceof Uint8Array
		? Buffer.compare(Buffer.from(got), Buffer.from(want)) === 0
		: JSON.stringify(got) === JSON.stringify(want);
	if (!same) throw new CheckFailed(`${what}: got ${fmt(got)}, wanted ${fmt(want)}`);
}
function sameSet(got, want, what) {
	eq([...got].sort(), [...want].sort(), what);
}
// rejects(promiseOrFn, what): the error it rejects with; a resolution fails the check.
async function rejects(p, what) {
	let v;
	try {
		v = await (typeof p === "function" ? p() : p);
	} catch (e) {
		return e;
	}
	throw new CheckFailed(`${what} resolved (${fmt(v)}) instead of rejecting`);
}
function isNamed(e, cls) {
	return e instanceof Error && e.constructor?.name === cls;
}
function withTimeout(p, ms, what) {
	let t;
	return Promise.race([
		p,
		new Promise((_, rej) => {
			t = setTimeout(() => rej(new CheckFailed(`${what} timed out after ${Math.round(ms / 1000)} s`)), ms);
		}),
	]).finally(() => clearTimeout(t));
}
const note = (s) => console.log(`# ${String(s).replace(/\n/g, "\n# ")}`);

// ---- sandboxes this run made: all of them are killed at the end ---------------

const created = new Map(); // id -> the Sandbox object that created it
const killed = new Set(); // ids known to be gone
const handles = new Set(); // every Sandbox object (create or connect), closed at the end
const rawSockets = new Set();

function createTracked(opts) {
	const p = Sandbox.create(opts);
	// Registered even when a caller has given up waiting (timeout): cleanup still kills it.
	p.then((sb) => {
		created.set(sb.id, sb);
		handles.add(sb);
	}, () => {});
	return p;
}
function connectTracked(...args) {
	const p = Sandbox.connect(...args);
	p.then((sb) => handles.add(sb), () => {});
	return p;
}
async function closeQuietly(sb, ms = 10_000) {
	try {
		await withTimeout(sb.close(), ms, "close()");
	} catch { /* reported by whoever needs it */ }
	handles.delete(sb);
}

// ---- fixtures: shared sandboxes and directories, made once on first use -------

const fixtureMakers = {
	// The sandbox most checks share: a duration sandbox, so that closing or
	// losing a socket never ends it.
	main: () =>
		createTracked({
			memory: "1GiB",
			timeout: "10m",
			labels: { ...LABELS, role: "main" },
			env: { KILN_SDK_GREETING: GREETING },
		}),
	// A second duration sandbox for close/connect, kill and list.
	victim: () => createTracked({ memory: "768MiB", timeout: "10m", labels: { ...LABELS, role: "victim" } }),
	// ROOT in main, made with bash so that fs checks do not depend on fs.mkdir.
	root: async () => {
		const sb = await need("main");
		await sb.sh`mkdir -p ${ROOT}`.text();
		return ROOT;
	},
	// A small tree for walk and expandGlob, made with bash.
	globtree: async () => {
		const sb = await need("main");
		const g = `${ROOT}/globtree`;
		await sb.sh`mkdir -p ${g}/sub/deeper ${g}/empty && printf alpha >${g}/a.txt && printf notes >${g}/notes.md &&
printf beta >${g}/sub/b.txt && printf gamma >${g}/sub/deeper/c.txt && printf bin >${g}/sub/deeper/d.bin &&
ln -sfn a.txt ${g}/link-to-a`.text();
		return g;
	},
};
const fixtures = new Map();
let mainExtendedAt = 0;
async function need(name) {
	if (!fixtures.has(name)) {
		const p = withTimeout(fixtureMakers[name](), CREATE_MS, `making ${name}`);
		p.catch(() => {});
		fixtures.set(name, p);
		if (name === "main") mainExtendedAt = Date.now();
	}
	const v = await fixtures.get(name);
	// main lives 10 minutes; under emulation the run may take longer. Keep it
	// alive (best effort; the extendTimeout check tests the call itself).
	if (name === "main" && Date.now() - mainExtendedAt > 6 * 60_000) {
		mainExtendedAt = Date.now();
		try {
			await withTimeout(v.extendTimeout("15m"), 20_000, "extendTimeout");
		} catch (e) {
			note(`keeping the main sandbox alive: extendTimeout failed: ${why(e)}`);
		}
	}
	return v;
}

// ---- the checks ---------------------------------------------------------------

const checks = [];
// check(name, needs, fn, timeoutMs): fn gets the needed fixtures by name.
function check(name, needs, fn, timeoutMs = CHECK_MS) {
	if (name.includes("#")) throw new Error(`check names cannot hold '#': ${name}`);
	checks.push({ name, needs, fn, timeoutMs });
}

// ---- create ----

check("create: Sandbox.create with memory 1GiB, timeout 10m, labels and env gives an sbx_ id", ["main"], ({ main }) => {
	assert(SBX_ID.test(String(main.id)), `sandbox.id ${fmt(main.id)} does not match ${SBX_ID}`);
	note(`main sandbox: ${main.id}`);
});

check("create: the env option reaches sh (echo $KILN_SDK_GREETING)", ["main"], async ({ main }) => {
	eq(await main.sh`echo "$KILN_SDK_GREETING"`.text(), `${GREETING}\n`, "stdout");
});

// ---- sh ----

check("sh: echo hi .text() gives its stdout", ["main"], async ({ main }) => {
	eq(await main.sh`echo hi`.text(), "hi\n", "stdout");
});

check("sh: .stderr('piped') collects stderr", ["main"], async ({ main }) => {
	// Each builder modifier starts again from the defaults (an SDK quirk), so
	// stdout stays "inherit" here; the command writes nothing to it.
	const r = await main.sh`echo oops >&2`.stderr("piped");
	eq(r.stderrText, "oops\n", "stderrText");
	eq(r.status.code, 0, "status.code");
});

check("sh: a non-zero exit throws SandboxCommandError carrying the exit code", ["main"], async ({ main }) => {
	const e = await rejects(main.sh`exit 7`.text(), "sh`exit 7`");
	assert(e instanceof SandboxCommandError, `wanted SandboxCommandError, got ${why(e)}`);
	eq(e.code, 7, "err.code");
	assert(/exit code 7/.test(e.message), `message ${fmt(e.message)} does not name exit code 7`);
});

check("sh: noThrow() resolves with the failing status", ["main"], async ({ main }) => {
	const r = await main.sh`exit 3`.noThrow();
	eq(r.status.code, 3, "status.code");
	eq(r.status.success, false, "status.success");
});

check("sh: .json() parses stdout", ["main"], async ({ main }) => {
	eq(await main.sh`echo '{"a":1,"b":[true,null,"x y"]}'`.json(), { a: 1, b: [true, null, "x y"] }, "json");
});

check("sh: a multi-line script runs in one bash", ["main"], async ({ main }) => {
	const out = await main.sh`
set -e
x=4
for i in 1 2 3; do
  x=$((x + i))
done
echo "sum=$x"
echo "bash=\${BASH_VERSION%%.*}"
`.text();
	assert(/^sum=10\nbash=[0-9]+\n$/.test(out), `stdout ${fmt(out)}`);
});

check("sh: interpolated values are shell-escaped", ["main"], async ({ main }) => {
	const v = `a b'c"$HOME;*`;
	eq(await main.sh`printf '%s|' ${v} ${["x y", "z"]}`.text(), `${v}|x y|z|`, "stdout");
});

let guestUser = null; // whoami, for the permission check
check("sh: pwd and whoami answer", ["main"], async ({ main }) => {
	const pwd = (await main.sh`pwd`.text()).trim();
	guestUser = (await main.sh`whoami`.text()).trim();
	note(`pwd=${pwd} whoami=${guestUser}`);
	assert(pwd.startsWith("/"), `pwd ${fmt(pwd)}`);
	assert(guestUser.length > 0, "whoami printed nothing");
});

// ---- spawn ----

check("spawn: stdin piped into cat comes back byte for byte", ["main"], async ({ main }) => {
	const data = new Uint8Array(70_000).map((_, i) => (i * 7) & 255);
	const child = await main.spawn("cat", { stdin: "piped", stdout: "piped", stderr: "piped" });
	const w = child.stdin.getWriter();
	await w.write(data.subarray(0, 1000));
	await w.write(data.subarray(1000));
	await w.close();
	const out = await child.output();
	eq(out.status.code, 0, "status.code");
	eq(out.stdout, data, "stdout");
});

check("spawn: output() collects piped stdout, stderr and the exit code", ["main"], async ({ main }) => {
	const child = await main.spawn("bash", { args: ["-c", "echo out; echo err >&2; exit 5"], stdout: "piped", stderr: "piped" });
	assert(typeof child.pid === "number", `pid ${fmt(child.pid)}`);
	const out = await child.output();
	eq(out.stdoutText, "out\n", "stdoutText");
	eq(out.stderrText, "err\n", "stderrText");
	eq([out.status.success, out.status.code, out.status.signal], [false, 5, null], "[success, code, signal]");
});

check("spawn: env and cwd options apply", ["main"], async ({ main }) => {
	const child = await main.spawn("bash", {
		args: ["-c", 'printf "%s %s" "$KILN_SDK_FOO" "$PWD"'],
		env: { KILN_SDK_FOO: "foo bar" },
		cwd: "/tmp",
		stdout: "piped",
		stderr: "piped",
	});
	eq((await child.output()).stdoutText, "foo bar /tmp", "stdout");
});

for (const [sig, code] of [["SIGTERM", 143], ["SIGKILL", 137]]) {
	check(`spawn: kill('${sig}') of sleep 100 gives code ${code} and signal ${sig}`, ["main"], async ({ main }) => {
		const child = await main.spawn("sleep", { args: ["100"], stdout: "null", stderr: "null" });
		await sleep(300);
		await child.kill(sig);
		const st = await child.status;
		eq([st.success, st.code, st.signal], [false, code, sig], "[success, code, signal]");
	});
}

check("spawn: a missing binary rejects with NotFound (ENOENT)", ["main"], async ({ main }) => {
	const e = await rejects(main.spawn("kiln-sdk-no-such-binary", { stdout: "null", stderr: "null" }), "spawn");
	// Under Node the SDK rebuilds Deno.errors.NotFound from @deno/shim-deno:
	// its constructor is named NotFound, but err.name stays "Error".
	assert(isNamed(e, "NotFound") && e.code === "ENOENT", `wanted NotFound with code ENOENT, got ${why(e)}`);
});

// ---- fs ----

check("fs: writeTextFile and readTextFile round-trip UTF-8", ["main", "root"], async ({ main, root }) => {
	const p = `${root}/text.txt`;
	const s = "héllo wörld ✓ 🦕\nline 2\n";
	await main.fs.writeTextFile(p, s);
	eq(await main.fs.readTextFile(p), s, "readTextFile");
	eq((await main.fs.stat(p)).size, enc(s).length, "size in UTF-8 bytes");
});

check("fs: writeFile and readFile round-trip all 256 byte values", ["main", "root"], async ({ main, root }) => {
	const p = `${root}/bytes.bin`;
	const b = new Uint8Array(512).map((_, i) => i & 255);
	await main.fs.writeFile(p, b);
	eq(await main.fs.readFile(p), b, "readFile");
});

check("fs: a 3 MiB random buffer round-trips, and the guest's sha256sum agrees", ["main", "root"], async ({ main, root }) => {
	const p = `${root}/big.bin`;
	const b = new Uint8Array(randomBytes(3 * 1024 * 1024));
	await main.fs.writeFile(p, b);
	const guestSum = (await main.sh`sha256sum ${p}`.text()).split(" ")[0];
	eq(guestSum, sha256(b), "sha256 in the guest");
	const back = await main.fs.readFile(p);
	eq(back.length, b.length, "length read back");
	eq(sha256(back), sha256(b), "sha256 read back");
}, 2 * CHECK_MS);

check("fs: mkdir recursive makes nested directories, twice without error", ["main", "root"], async ({ main, root }) => {
	const d = `${root}/mk/a/b/c`;
	await main.fs.mkdir(d, { recursive: true });
	await main.fs.mkdir(d, { recursive: true });
	eq((await main.fs.stat(d)).isDirectory, true, "stat(c).isDirectory");
});

check("fs: readDir lists files, directories and symlinks with their types", ["main", "root"], async ({ main, root }) => {
	const d = `${root}/rd`;
	await main.sh`mkdir -p ${d}/dir && printf x >${d}/file && ln -sfn file ${d}/link`.text();
	const got = [];
	for await (const e of main.fs.readDir(d)) got.push(`${e.name}:${e.isFile ? "f" : ""}${e.isDirectory ? "d" : ""}${e.isSymlink ? "l" : ""}`);
	sameSet(got, ["dir:d", "file:f", "link:l"], "entries (name:types)");
});

check("fs: stat and lstat give FileInfo (isFile, size, mtime Date, isSymlink)", ["main", "root"], async ({ main, root }) => {
	const p = `${root}/st.txt`;
	await main.sh`printf hello >${p} && ln -sfn st.txt ${root}/st-link`.text();
	const s = await main.fs.stat(p);
	eq([s.isFile, s.isDirectory, s.isSymlink, s.size], [true, false, false, 5], "[isFile, isDirectory, isSymlink, size]");
	for (const k of ["mtime", "atime", "ctime", "birthtime"]) assert(s[k] instanceof Date && !isNaN(s[k]), `${k} is ${fmt(s[k])}, not a valid Date`);
	eq(s.mode & 0o170000, 0o100000, "file type bits of mode");
	for (const k of ["dev", "ino", "nlink", "uid", "gid", "blksize", "blocks"]) assert(typeof s[k] === "number", `${k} is ${fmt(s[k])}`);
	const l = await main.fs.lstat(`${root}/st-link`);
	eq([l.isSymlink, l.isFile], [true, false], "lstat(link) [isSymlink, isFile]");
	const f = await main.fs.stat(`${root}/st-link`);
	eq([f.isSymlink, f.isFile, f.size], [false, true, 5], "stat(link) follows it: [isSymlink, isFile, size]");
	eq((await main.fs.stat(root)).isDirectory, true, "stat(dir).isDirectory");
	note(`mtime=${s.mtime.toISOString()} mode=0${s.mode.toString(8)} uid=${s.uid}`);
});

check("fs: rename moves a file", ["main", "root"], async ({ main, root }) => {
	await main.fs.writeTextFile(`${root}/mv-a`, "moved");
	await main.fs.rename(`${root}/mv-a`, `${root}/mv-b`);
	eq(await main.fs.readTextFile(`${root}/mv-b`), "moved", "new path");
	eq(await main.sh`test -e ${root}/mv-a && echo there || echo gone`.text(), "gone\n", "old path");
});

check("fs: remove recursive deletes a tree", ["main", "root"], async ({ main, root }) => {
	const d = `${root}/rm`;
	await main.sh`mkdir -p ${d}/x/y && printf f >${d}/x/y/f && printf g >${d}/g`.text();
	await main.fs.remove(d, { recursive: true });
	eq(await main.sh`test -e ${d} && echo there || echo gone`.text(), "gone\n", "tree");
});

check("fs: copyFile copies the contents", ["main", "root"], async ({ main, root }) => {
	const b = new Uint8Array(randomBytes(10_000));
	await main.fs.writeFile(`${root}/cp-src`, b);
	await main.fs.copyFile(`${root}/cp-src`, `${root}/cp-dst`);
	eq(await main.fs.readFile(`${root}/cp-dst`), b, "copy");
});

check("fs: symlink, readLink and realPath", ["main", "root"], async ({ main, root }) => {
	await main.fs.writeTextFile(`${root}/sl-target.txt`, "target");
	await main.fs.symlink("sl-target.txt", `${root}/sl-link`);
	eq(await main.fs.readLink(`${root}/sl-link`), "sl-target.txt", "readLink");
	const realRoot = await main.fs.realPath(root);
	eq(await main.fs.realPath(`${root}/sl-link`), `${realRoot}/sl-target.txt`, "realPath");
	eq(await main.fs.readTextFile(`${root}/sl-link`), "target", "reading through the link");
});

check("fs: chmod 0640 shows in stat mode", ["main", "root"], async ({ main, root }) => {
	const p = `${root}/chmod.txt`;
	await main.fs.writeTextFile(p, "x");
	await main.fs.chmod(p, 0o640);
	eq(((await main.fs.stat(p)).mode & 0o7777).toString(8), "640", "mode & 07777 (octal)");
});

check("fs: truncate to 3 bytes, then to 0", ["main", "root"], async ({ main, root }) => {
	const p = `${root}/trunc.txt`;
	await main.fs.writeTextFile(p, "abcdef");
	await main.fs.truncate(p, 3);
	eq(await main.fs.readTextFile(p), "abc", "after truncate(3)");
	await main.fs.truncate(p);
	eq((await main.fs.stat(p)).size, 0, "size after truncate()");
});

check("fs: makeTempDir and makeTempFile honour dir, prefix and suffix", ["main", "root"], async ({ main, root }) => {
	const d = await main.fs.makeTempDir({ dir: root, prefix: "pre-", suffix: "-suf" });
	assert(path.posix.dirname(d) === root && /^pre-.+-suf$/.test(path.posix.basename(d)), `makeTempDir gave ${fmt(d)}`);
	eq((await main.fs.stat(d)).isDirectory, true, "temp dir isDirectory");
	const f = await main.fs.makeTempFile({ dir: root, prefix: "f-" });
	assert(path.posix.dirname(f) === root && /^f-./.test(path.posix.basename(f)), `makeTempFile gave ${fmt(f)}`);
	const s = await main.fs.stat(f);
	eq([s.isFile, s.size], [true, 0], "temp file [isFile, size]");
	const dflt = await main.fs.makeTempDir();
	assert(dflt.startsWith("/"), `makeTempDir() gave ${fmt(dflt)}`);
	note(`makeTempDir() with no options: ${dflt}`);
	await main.fs.remove(dflt);
});

check("fs: utime sets atime and mtime", ["main", "root"], async ({ main, root }) => {
	const p = `${root}/utime.txt`;
	await main.fs.writeTextFile(p, "t");
	const at = new Date("2001-02-03T04:05:06.000Z");
	const mt = new Date("2002-03-04T05:06:07.000Z");
	await main.fs.utime(p, at, mt);
	const s = await main.fs.stat(p);
	eq([s.atime.toISOString(), s.mtime.toISOString()], [at.toISOString(), mt.toISOString()], "[atime, mtime]");
});

check("fs: umask returns the previous mask and applies to mkdir", ["main", "root"], async ({ main, root }) => {
	const cur = await main.fs.umask();
	assert(Number.isInteger(cur) && cur >= 0 && cur <= 0o777, `umask() gave ${fmt(cur)}`);
	let restored = false;
	try {
		eq(await main.fs.umask(0o027), cur, "umask(027) returns the previous mask");
		eq(await main.fs.umask(), 0o027, "umask() after umask(027)");
		await main.fs.mkdir(`${root}/umask-dir`);
		eq(((await main.fs.stat(`${root}/umask-dir`)).mode & 0o777).toString(8), "750", "mkdir mode under umask 027 (octal)");
		eq(await main.fs.umask(cur), 0o027, "umask(previous) returns 027");
		restored = true;
	} finally {
		if (!restored) await main.fs.umask(cur).catch(() => {});
	}
});

check("fs: file handle create, write, seek, read, stat, truncate, close", ["main", "root"], async ({ main, root }) => {
	const p = `${root}/handle.txt`;
	const f = await main.fs.create(p);
	try {
		eq(await f.write(enc("hello world")), 11, "write() bytes");
		eq(await f.seek(0, SeekMode.Start), 0, "seek(0, Start)");
		const a = new Uint8Array(5);
		eq(await f.read(a), 5, "read(5) count");
		eq(dec(a), "hello", "read(5) bytes");
		eq(await f.seek(1, SeekMode.Current), 6, "seek(1, Current)");
		eq(await f.seek(-5, SeekMode.End), 6, "seek(-5, End)");
		const b = new Uint8Array(16);
		eq(await f.read(b), 5, "read to the end: count");
		eq(dec(b.subarray(0, 5)), "world", "read to the end: bytes");
		eq(await f.read(b), null, "read at EOF");
		eq((await f.stat()).size, 11, "stat().size");
		await f.truncate(5);
		eq((await f.stat()).size, 5, "stat().size after truncate(5)");
	} finally {
		await f.close();
	}
	const g = await main.fs.open(p, { read: true });
	try {
		const c = new Uint8Array(100);
		const n = await g.read(c);
		eq(dec(c.subarray(0, n ?? 0)), "hello", "reopened for reading");
	} finally {
		await g.close();
	}
});

check("fs: readFile of a missing path rejects NotFound (ENOENT)", ["main", "root"], async ({ main, root }) => {
	const e = await rejects(main.fs.readFile(`${root}/no-such-file`), "readFile");
	assert(isNamed(e, "NotFound") && e.code === "ENOENT", `wanted NotFound with code ENOENT, got ${why(e)}`);
});

check("fs: mkdir of an existing path rejects AlreadyExists", ["main", "root"], async ({ main, root }) => {
	await main.fs.mkdir(`${root}/exists`, { recursive: true });
	const e = await rejects(main.fs.mkdir(`${root}/exists`), "mkdir");
	assert(isNamed(e, "AlreadyExists"), `wanted AlreadyExists (code EEXIST), got ${why(e)}`);
	note(`AlreadyExists code: ${fmt(e.code)}`);
});

// A non-root user cannot write into /root (0700 root:root on Debian). Root
// ignores modes (CAP_DAC_OVERRIDE: a chmod 000 directory would not stop it),
// so for root the check uses an immutable file (chattr +i; the write then
// fails with EPERM, also PermissionDenied) on the root filesystem.
check("fs: a write the default user may not make rejects PermissionDenied", ["main", "root"], async ({ main, root }) => {
	guestUser ??= (await main.sh`whoami`.text()).trim();
	if (guestUser !== "root") {
		const p = `/root/kiln-sdk-${RUN}`;
		const e = await rejects(main.fs.writeTextFile(p, "x"), `writeTextFile(${p}) as ${guestUser}`).catch(async (err) => {
			// It was written: do not leave it. (Builder modifiers do not combine, so sudo is in the text.)
			await main.sh`sudo -n rm -f ${p}`.noThrow();
			throw err;
		});
		assert(isNamed(e, "PermissionDenied"), `wanted PermissionDenied (EACCES), got ${why(e)}`);
		note(`as ${guestUser}: ${why(e)}`);
	} else {
		const p = `/var/tmp/kiln-sdk-immutable-${RUN}`;
		await main.sh`printf x >${p} && chattr +i ${p}`.text();
		try {
			const e = await rejects(main.fs.writeTextFile(p, "y"), `writeTextFile(${p}) on an immutable file as root`);
			assert(isNamed(e, "PermissionDenied"), `wanted PermissionDenied (EPERM), got ${why(e)}`);
			note(`as root, immutable file: ${why(e)}`);
		} finally {
			await main.sh`chattr -i ${p}; rm -f ${p}`.noThrow();
		}
	}
});

// ---- upload, download, walk, expandGlob ----

let localTmp = null;
async function localTree() {
	localTmp ??= await fsp.realpath(await fsp.mkdtemp(path.join(os.tmpdir(), "kiln-sdk-")));
	const t = path.join(localTmp, "src", "tree");
	await fsp.mkdir(path.join(t, "sub", "deeper"), { recursive: true });
	await fsp.mkdir(path.join(t, "empty"), { recursive: true });
	await fsp.writeFile(path.join(t, "a.txt"), "alpha\n");
	await fsp.writeFile(path.join(t, "notes.md"), "# notes\n");
	await fsp.writeFile(path.join(t, "sub", "b.txt"), "beta\n");
	await fsp.writeFile(path.join(t, "sub", "deeper", "c.bin"), randomBytes(200_000));
	await fsp.writeFile(path.join(t, "sub", "deeper", "zero"), "");
	await fsp.symlink("../a.txt", path.join(t, "sub", "link-to-a"));
	return t;
}
// snapshot(dir): relative path -> "dir" | "file <sha256>" | "link <target>".
async function snapshot(dir) {
	const out = new Map();
	async function walk(rel) {
		const abs = path.join(dir, rel);
		const st = await fsp.lstat(abs);
		if (st.isSymbolicLink()) out.set(rel, `link ${await fsp.readlink(abs)}`);
		else if (st.isFile()) out.set(rel, `file ${sha256(await fsp.readFile(abs))}`);
		else if (st.isDirectory()) {
			out.set(rel || ".", "dir");
			for (const n of await fsp.readdir(abs)) await walk(path.join(rel, n));
		} else out.set(rel, "other");
	}
	await walk("");
	return out;
}

check("fs: upload of a local tree and download back are byte-identical", ["main", "root"], async ({ main, root }) => {
	const src = await localTree();
	const up = `${root}/up`;
	await main.sh`mkdir -p ${up}`.text(); // upload makes up/tree itself, not up
	await main.fs.upload(src, up);
	// What arrived, seen from inside the guest.
	const inGuest = await main.sh`cd ${up}/tree && sha256sum a.txt sub/deeper/c.bin && readlink sub/link-to-a && test -d empty && echo empty-dir`.text();
	const want = await snapshot(src);
	const c = want.get(path.join("sub", "deeper", "c.bin")).split(" ")[1];
	assert(inGuest.includes(c) && /\n\.\.\/a\.txt\nempty-dir\n$/.test(inGuest), `in the guest: ${fmt(inGuest)}`);
	const dst = path.join(localTmp, "dst");
	await fsp.mkdir(dst, { recursive: true });
	await main.fs.download(`${up}/tree`, dst); // makes dst/tree
	const got = await snapshot(path.join(dst, "tree"));
	eq([...got.entries()].sort(), [...want.entries()].sort(), "downloaded tree (path, kind, sha256 or link target)");
}, 2 * CHECK_MS);

check("fs: walk honours maxDepth and exts", ["main", "globtree"], async ({ main, globtree }) => {
	const rel = (p) => path.posix.relative(globtree, p) || ".";
	const d1 = [];
	for await (const e of main.fs.walk(globtree, { maxDepth: 1 })) d1.push(rel(e.path));
	sameSet(d1, [".", "a.txt", "notes.md", "sub", "empty", "link-to-a"], "walk maxDepth 1");
	const txt = [];
	for await (const e of main.fs.walk(globtree, { exts: [".txt"], includeDirs: false })) {
		assert(e.isFile && e.name === path.posix.basename(e.path), `entry ${fmt(e)}`);
		txt.push(rel(e.path));
	}
	sameSet(txt, ["a.txt", "sub/b.txt", "sub/deeper/c.txt"], "walk exts .txt");
});

check("fs: expandGlob('**/*.txt') finds the text files", ["main", "globtree"], async ({ main, globtree }) => {
	const got = [];
	for await (const e of main.fs.expandGlob("**/*.txt", { root: globtree })) got.push(path.posix.relative(globtree, e.path));
	sameSet(got, ["a.txt", "sub/b.txt", "sub/deeper/c.txt"], "matches");
});

// ---- env ----

check("env: set, get, toObject and delete", ["main"], async ({ main }) => {
	await main.env.set("KILN_SDK_A", "one");
	eq(await main.env.get("KILN_SDK_A"), "one", "get after set");
	const all = await main.env.toObject();
	eq(all.KILN_SDK_A, "one", "toObject().KILN_SDK_A");
	assert(typeof all.PATH === "string" && all.PATH.length > 0, `toObject().PATH is ${fmt(all.PATH)}`);
	await main.env.delete("KILN_SDK_A");
	const gone = await main.env.get("KILN_SDK_A");
	assert(gone === undefined || gone === null, `get after delete gave ${fmt(gone)}`);
});

check("env: sh sees a variable set with env.set", ["main"], async ({ main }) => {
	const v = "b value with spaces & $dollars";
	await main.env.set("KILN_SDK_B", v);
	eq(await main.sh`printf %s "$KILN_SDK_B"`.text(), v, "stdout");
});

// ---- timeout ----

// ---- deno runtimes and fetch ----

check("deno: run({code}) with scriptArgs prints to a piped stdout and exits 0", ["main"], async ({ main }) => {
	const p = await main.deno.run({ code: "console.log('args', ...Deno.args)", scriptArgs: ["a", "b"], stdout: "piped" });
	const out = await p.output();
	eq(out.status.code, 0, "exit code");
	eq(dec(out.stdout).trim(), "args a b", "stdout");
});

check("deno: run({entrypoint}) serves HTTP; httpReady is true and DenoProcess.fetch reaches it", ["main", "root"], async ({ main, root }) => {
	await main.fs.writeTextFile(`${root}/server.ts`,
		"Deno.serve({ port: 8123, onListen() {} }, (req) => new Response('hi ' + new URL(req.url).pathname));");
	const p = await main.deno.run({ entrypoint: `${root}/server.ts`, stdout: "piped", stderr: "piped" });
	try {
		eq(await p.httpReady, true, "httpReady");
		const r = await p.fetch("http://whatever.invalid/path?x=1");
		eq(r.status, 200, "status");
		eq(await r.text(), "hi /path", "body");
	} finally {
		await p.kill("SIGKILL").catch(() => {});
	}
});

check("deno: eval keeps no state but returns the value; a thrown error rejects with its class", ["main"], async ({ main }) => {
	eq(await main.deno.eval("1 + 2"), 3, "eval");
	const e = await rejects(main.deno.eval("notDefinedAnywhere()"), "eval of a ReferenceError");
	assert(/notDefinedAnywhere/.test(e.message), `message ${fmt(e.message)}`);
});

check("deno: repl keeps const across evals, call applies a function, close ends it", ["main"], async ({ main }) => {
	const repl = await main.deno.repl();
	try {
		await repl.eval("const base = 40;");
		eq(await repl.eval("base + 2"), 42, "eval of base + 2");
		await repl.eval("function mul(a, b) { return a * b + base; }");
		eq(await repl.call("mul", 2, 3), 46, "call of mul");
		eq(await repl.call("(a, b) => a + b", 1, 2), 3, "call of an arrow");
		eq(JSON.stringify(await repl.eval("({ a: [1, 'x'] })")), '{"a":[1,"x"]}', "an object");
	} finally {
		await repl.close();
	}
	const st = await repl.status;
	eq(st.code, 0, "the REPL's exit code after close");
});

check("fetch: sandbox.fetch reaches a server in the guest, with method, headers and body", ["main", "root"], async ({ main, root }) => {
	await main.fs.writeTextFile(`${root}/echo.ts`,
		"Deno.serve({ port: 8124, onListen() {} }, async (req) => new Response(req.method + ' ' + req.headers.get('x-kiln') + ' ' + await req.text(), { headers: { 'x-back': 'yes' } }));");
	const p = await main.deno.run({ entrypoint: `${root}/echo.ts`, stdout: "piped", stderr: "piped" });
	try {
		eq(await p.httpReady, true, "httpReady");
		const r = await main.fetch("http://127.0.0.1:8124/", { method: "POST", headers: { "x-kiln": "k1" }, body: "payload" });
		eq(r.status, 200, "status");
		eq(r.headers.get("x-back"), "yes", "response header");
		eq(await r.text(), "POST k1 payload", "body");
		const nf = await main.fetch("http://127.0.0.1:8124/", { method: "HEAD" });
		eq(nf.status, 200, "HEAD status");
	} finally {
		await p.kill("SIGKILL").catch(() => {});
	}
});

check("fetch: a connection refused in the guest rejects with a TypeError", ["main"], async ({ main }) => {
	const e = await rejects(main.fetch("http://127.0.0.1:1/"), "fetch to a closed port");
	assert(e instanceof TypeError || e.constructor?.name === "TypeError", `got ${e.constructor?.name}: ${e.message}`);
});

// ---- exposeHttp: kilnd's ingress ----

// GET https://HOST:PORT/PATH through the ingress at 127.0.0.1, verifying
// kilnd's node CA (KILN_SDK_CA) for HOST.
async function ingressGet(url, path) {
	const { request } = await import("node:https");
	const { readFileSync } = await import("node:fs");
	const u = new URL(url);
	const ca = process.env.KILN_SDK_CA ? readFileSync(process.env.KILN_SDK_CA) : undefined;
	return await new Promise((resolve, reject) => {
		const req = request({ host: "127.0.0.1", port: u.port || 443, servername: u.hostname, path,
			headers: { host: u.host }, ca, rejectUnauthorized: !!ca }, (res) => {
			let body = "";
			res.setEncoding("utf8");
			res.on("data", (d) => (body += d));
			res.on("end", () => resolve({ status: res.statusCode, body }));
		});
		req.on("error", reject);
		req.setTimeout(60_000, () => req.destroy(new Error("timed out")));
		req.end();
	});
}

check("expose: exposeHttp({port}) serves the guest's server at https://NAME, with a certificate of the node CA", ["main", "root"], async ({ main, root }) => {
	await main.fs.writeTextFile(`${root}/pub.ts`, `Deno.serve({ port: 8126, onListen() {} }, (req) => {
  if (req.headers.get("upgrade") === "websocket") {
    const { socket, response } = Deno.upgradeWebSocket(req);
    socket.onmessage = (e) => socket.send("echo " + e.data);
    return response;
  }
  return new Response("public " + new URL(req.url).pathname);
});`);
	const p = await main.deno.run({ entrypoint: `${root}/pub.ts`, stdout: "piped", stderr: "piped" });
	eq(await p.httpReady, true, "httpReady");
	const url = await main.exposeHttp({ port: 8126 });
	note(`exposed at ${url}`);
	assert(/^https:\/\/sbx-[a-z]{3}-[0-9a-z]{20}-[0-9a-z]{6}\.localhost(:\d+)?$/.test(String(url)), `url ${url}`);
	const r = await ingressGet(url, "/hello");
	eq(r.status, 200, "status");
	eq(r.body, "public /hello", "body");
	// A WebSocket through the same name.
	const u = new URL(url);
	const { readFileSync } = await import("node:fs");
	const ws = new WebSocket(`wss://${u.host}/ws`, {
		ca: process.env.KILN_SDK_CA ? readFileSync(process.env.KILN_SDK_CA) : undefined,
		rejectUnauthorized: !!process.env.KILN_SDK_CA,
		lookup: (_h, _o, cb) => cb(null, [{ address: "127.0.0.1", family: 4 }]),
	});
	rawSockets.add(ws);
	const got = await new Promise((resolve, reject) => {
		ws.on("open", () => ws.send("ping-1"));
		ws.on("message", (d) => resolve(String(d)));
		ws.on("error", reject);
	});
	ws.close();
	eq(got, "echo ping-1", "WebSocket echo");
	globalThis.kilnExposedUrl = url;
});

check("expose: exposeHttp({pid}) follows a Deno runtime's own port", ["main", "root"], async ({ main, root }) => {
	await main.fs.writeTextFile(`${root}/pid.ts`, "Deno.serve({ port: 8127, onListen() {} }, () => new Response('by pid'));");
	const p = await main.deno.run({ entrypoint: `${root}/pid.ts`, stdout: "piped", stderr: "piped" });
	eq(await p.httpReady, true, "httpReady");
	const url = await main.exposeHttp({ pid: p.pid });
	const r = await ingressGet(url, "/");
	eq(`${r.status} ${r.body}`, "200 by pid", "answer");
	await p.kill("SIGKILL").catch(() => {});
});

// ---- exposeSsh: kilnd's SSH gateway, with OpenSSH's clients ----

const SSH_OPTS = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
	"-o", "BatchMode=yes", "-o", "ConnectTimeout=30"];
async function run(cmd, args, input) {
	const { spawn } = await import("node:child_process");
	return await new Promise((resolve) => {
		const p = spawn(cmd, args, { stdio: ["pipe", "pipe", "pipe"] });
		let out = "", err = "";
		p.stdout.on("data", (d) => (out += d));
		p.stderr.on("data", (d) => (err += d));
		const t = setTimeout(() => p.kill("SIGKILL"), 90_000);
		p.on("close", (code) => { clearTimeout(t); resolve({ code, out, err }); });
		p.stdin.end(input ?? "");
	});
}
const sshPort = () => process.env.KILN_SDK_SSH_PORT || "22";

check("expose: exposeSsh's username logs in with ssh, scp, sftp and ssh -L", ["main", "root"], async ({ main, root }) => {
	const { hostname, username } = await main.exposeSsh();
	assert(/^kiln-[0-9a-z]{24}$/.test(username), `username ${username}`);
	const dest = `${username}@${hostname}`;
	let r = await run("ssh", ["-p", sshPort(), ...SSH_OPTS, dest, "echo hi; whoami; exit 3"]);
	eq(`${r.code} ${r.out}`, "3 hi\napp\n", `ssh exec (stderr ${r.err})`);
	const { mkdtempSync, writeFileSync, readFileSync } = await import("node:fs");
	const dir = mkdtempSync("/tmp/kiln-sdk-ssh-");
	const blob = randomBytes(1 << 20);
	writeFileSync(`${dir}/up.bin`, blob);
	r = await run("scp", ["-P", sshPort(), ...SSH_OPTS, `${dir}/up.bin`, `${dest}:${root}/up.bin`]);
	eq(r.code, 0, `scp up (${r.err})`);
	eq(await main.sh`sha256sum ${root}/up.bin | cut -d' ' -f1`.text().then((t) => t.trim()), sha256(blob), "scp'd bytes");
	r = await run("sftp", ["-P", sshPort(), ...SSH_OPTS, "-b", "-", dest], `get ${root}/up.bin ${dir}/down.bin\n`);
	eq(r.code, 0, `sftp get (${r.err})`);
	eq(sha256(readFileSync(`${dir}/down.bin`)), sha256(blob), "sftp'd bytes");
	// ssh -L to a server in the guest.
	await main.fs.writeTextFile(`${root}/fwd.ts`, "Deno.serve({ port: 8128, onListen() {} }, () => new Response('through ssh -L'));");
	const p = await main.deno.run({ entrypoint: `${root}/fwd.ts`, stdout: "piped", stderr: "piped" });
	eq(await p.httpReady, true, "httpReady");
	const { spawn } = await import("node:child_process");
	const lport = 20000 + Math.floor(Math.random() * 20000);
	const fwd = spawn("ssh", ["-p", sshPort(), ...SSH_OPTS, "-N", "-L", `${lport}:127.0.0.1:8128`, dest], { stdio: "ignore" });
	try {
		let body = "";
		for (let i = 0; i < 60 && body !== "through ssh -L"; i++) {
			await sleep(500);
			body = await fetch(`http://127.0.0.1:${lport}/`).then((x) => x.text()).catch(() => "");
		}
		eq(body, "through ssh -L", "a page through ssh -L");
	} finally {
		fwd.kill("SIGKILL");
		await p.kill("SIGKILL").catch(() => {});
	}
});

// ---- volumes and snapshots (Client, on kiln's volumes and images) ----

// (root: a snapshot boots only when the volume holds a whole userland, as one made
// from: "builtin:debian-13" does: ~600 MiB copied twice, more than the nested
// host's tmpfs spares; tests/integration/kilnd.sh boots volume snapshots.)
check("volumes: create, get, list, a sandbox writes one at a mount path, snapshot, delete", [], async () => {
	const c = new Client();
	const slug = `v${RUN}`.slice(0, 30), snap = `s${RUN}`.slice(0, 30);
	const v = await c.volumes.create({ slug, region: "ord", capacity: "512MiB" });
	eq(`${v.slug} ${v.capacity}`, `${slug} ${512 << 20}`, "the created volume");
	eq((await c.volumes.get(slug))?.slug, slug, "get");
	eq(await c.volumes.get(`${slug}x`), null, "get of an unknown slug");
	const listed = [];
	for await (const x of await c.volumes.list()) listed.push(x.slug);
	assert(listed.includes(slug), `list ${fmt(listed)}`);
	const w = await createTracked({ memory: "768MiB", timeout: "10m", labels: { ...LABELS, role: "volume" },
		volumes: { "/data": slug } });
	try {
		await w.sh`echo kept | sudo tee /data/note >/dev/null && sync`.text();
		eq((await w.fs.readTextFile("/data/note")).trim(), "kept", "the file on the volume");
	} finally {
		await w.kill();
		killed.add(w.id);
	}
	const sn = await c.volumes.snapshot(slug, { slug: snap });
	eq(`${sn.slug} ${sn.isBootable}`, `${snap} true`, "the snapshot");
	const snaps = [];
	for await (const x of await c.snapshots.list()) snaps.push(x.slug);
	assert(snaps.includes(snap), `snapshots ${fmt(snaps)}`);
	await c.snapshots.delete(snap);
	eq(await c.snapshots.get(snap), null, "the snapshot after delete");
	await c.volumes.delete(slug);
	eq(await c.volumes.get(slug), null, "the volume after delete");
}, 300_000);

check("timeout: extendTimeout('15m') returns a Date in the future", ["main"], async ({ main }) => {
	const d = await main.extendTimeout("15m");
	assert(d instanceof Date && !isNaN(d), `got ${fmt(d)}`);
	assert(d.getTime() > Date.now() + 60_000, `${d.toISOString()} is not in the future (now ${new Date().toISOString()})`);
	assert(d.getTime() <= Date.now() + 31 * 60_000, `${d.toISOString()} is more than 30 minutes away`);
	mainExtendedAt = Date.now();
	note(`stop at ${d.toISOString()}`);
});

// ---- connect, list, kill ----

let victimConn = null; // a connect-ed Sandbox object for the victim
check("connect: Sandbox.connect({id}) after close() of a duration sandbox runs sh", ["victim"], async ({ victim }) => {
	const id = victim.id;
	await withTimeout(victim.close(), 35_000, "close() of the creating socket");
	const c = await connectTracked({ id });
	victimConn = c;
	eq(c.id, id, "connected sandbox's id");
	eq(await c.sh`echo again`.text(), "again\n", "sh after reconnecting");
});

check("list: Client().sandboxes.list({labels}) shows this run's sandboxes running", ["main", "victim"], async ({ main, victim }) => {
	const list = await new Client().sandboxes.list({ labels: { run: RUN } });
	assert(Array.isArray(list), `list gave ${fmt(list)}`);
	for (const [role, id] of [["main", main.id], ["victim", victim.id]]) {
		const m = list.find((s) => s.id === id);
		assert(m, `${role} ${id} is not in ${fmt(list.map((s) => s.id))}`);
		eq([m.status, m.labels?.role, m.labels?.run], ["running", role, RUN], `${role}: [status, labels.role, labels.run]`);
		assert(m.createdAt instanceof Date && !isNaN(m.createdAt), `${role}.createdAt is ${fmt(m.createdAt)}`);
		eq(m.stoppedAt, null, `${role}.stoppedAt`);
	}
	note(`listed: ${list.map((s) => `${s.id} ${s.status} ${s.region}`).join(", ")}`);
});

check("kill: kill() resolves, and a later connect to it is refused", ["victim"], async ({ victim }) => {
	const c = victimConn ?? (victimConn = await connectTracked(victim.id));
	// A name and an SSH login to check after the kill ("expose: ... dies with its sandbox").
	globalThis.kilnVictimUrl = await c.exposeHttp({ port: 8000 }).catch(() => null);
	globalThis.kilnVictimSsh = await c.exposeSsh().catch(() => null);
	await withTimeout(c.kill(), 30_000, "kill()");
	killed.add(victim.id);
	const e = await rejects(withTimeout(connectTracked(victim.id), 30_000, "connect"), "Sandbox.connect of a killed sandbox");
	assert(e instanceof ConnectionEstablishmentError, `wanted ConnectionEstablishmentError, got ${why(e)}`);
	assert(e.status >= 400 && e.status < 500, `status ${e.status}, wanted 4xx (404 or 410)`);
	note(`connect after kill: ${why(e)}`);
});

check("expose: a name dies with its sandbox", ["victim"], async ({ victim }) => {
	// victim was killed by the check before; a name made for it before then must answer no more.
	const url = globalThis.kilnVictimUrl;
	if (!url) throw new CheckFailed("no name was exposed for the victim before its kill");
	const r = await ingressGet(url, "/").catch((e) => ({ status: 0, body: String(e.message) }));
	assert(r.status !== 200, `the name still answers: ${r.status} ${r.body}`);
	note(`after the kill: ${r.status || r.body}`);
});

check("expose: an exposeSsh username dies with its sandbox", ["victim"], async ({ victim }) => {
	const creds = globalThis.kilnVictimSsh;
	if (!creds) throw new CheckFailed("no SSH login was exposed for the victim before its kill");
	const r = await run("ssh", ["-p", sshPort(), ...SSH_OPTS, `${creds.username}@${creds.hostname}`, "true"]);
	assert(r.code === 255, `ssh after the kill: exit ${r.code} ${r.err}`);
	note(`ssh after the kill: ${r.err.trim()}`);
});

check("list: the killed sandbox is listed stopped, with stoppedAt; the label filter holds", ["main", "victim"], async ({ main, victim }) => {
	assert(killed.has(victim.id), "the kill check did not kill the victim");
	const list = await new Client().sandboxes.list({ labels: { run: RUN, role: "victim" } });
	eq(list.map((s) => s.id), [victim.id], "ids listed for {run, role: victim}");
	eq(list[0].status, "stopped", "status");
	assert(list[0].stoppedAt instanceof Date && !isNaN(list[0].stoppedAt), `stoppedAt is ${fmt(list[0].stoppedAt)}`);
	const mainList = await new Client().sandboxes.list({ labels: { run: RUN, role: "main" } });
	eq(mainList.map((s) => [s.id, s.status]), [[main.id, "running"]], "[id, status] listed for {run, role: main}");
});

// ---- errors ----

// If a bad create is let through, the sandbox is tracked and killed at the end.
check("errors: a malformed token (ddo_bogus) makes Sandbox.create throw InvalidTokenError", [], async () => {
	const e = await rejects(createTracked({ token: "ddo_bogus", memory: "768MiB", timeout: "1m", labels: LABELS }), "create");
	assert(e instanceof InvalidTokenError, `wanted InvalidTokenError, got ${why(e)}`);
});

check("errors: a well-formed unknown token makes Sandbox.connect throw InvalidTokenError", ["main"], async ({ main }) => {
	const token = `ddo_${"0123456789abcdefghijABCDEFGHIJ0123456789xyz"}`;
	const e = await rejects(connectTracked(main.id, { token }), "connect");
	assert(e instanceof InvalidTokenError, `wanted InvalidTokenError, got ${why(e)}`);
});

check("errors: connect to an unknown sandbox id fails with ConnectionEstablishmentError 404", [], async () => {
	const e = await rejects(connectTracked("sbx_loc_00000000000000000000"), "connect");
	assert(e instanceof ConnectionEstablishmentError, `wanted ConnectionEstablishmentError, got ${why(e)}`);
	eq(e.status, 404, "status");
	note(why(e));
});

check("errors: memory out of range is refused by the SDK before any request", [], async () => {
	for (const memory of ["512MiB", "8GiB", 100]) {
		const e = await rejects(createTracked({ memory, labels: LABELS }), `create with memory ${fmt(memory)}`);
		assert(e instanceof InvalidMemoryError, `memory ${fmt(memory)}: wanted InvalidMemoryError, got ${why(e)}`);
	}
});

// sdk.sh starts kilnd with --mem-overcommit chosen so that sandboxes may
// commit about 3 GiB in all: main (1 GiB) and victim (768 MiB) fit, a
// 4096 MiB sandbox (the SDK's largest) never does.
check("errors: a create the node cannot fit (4096 MiB) fails with 503 NO_CAPACITY", [], async () => {
	const e = await rejects(createTracked({ memory: "4096MiB", timeout: "1m", labels: { ...LABELS, role: "nocap" } }), "create");
	assert(e instanceof ConnectionEstablishmentError, `wanted ConnectionEstablishmentError, got ${why(e)}`);
	eq([e.status, e.code], [503, "NO_CAPACITY"], "[status, code]");
	note(why(e));
}, 2 * CHECK_MS);

// ---- hostile clients (raw sockets with the SDK's ws) ----

// rawConnect(id, opts): an open raw control socket of sandbox id, with a queue of what arrives.
async function rawConnect(id, { deflate = true } = {}) {
	const u = new URL(ENDPOINT);
	u.pathname = `/api/v3/sandbox/${id}/connect`;
	const ws = new WebSocket(u.href.replace(/^http/, "ws"), [], {
		headers: { authorization: `Bearer ${TOKEN}` },
		perMessageDeflate: deflate,
	});
	rawSockets.add(ws);
	const events = [];
	let wake = null;
	const push = (ev) => {
		events.push(ev);
		wake?.();
	};
	ws.on("message", (data, isBinary) => push({ type: "message", text: data.toString("utf8"), isBinary }));
	ws.on("close", (code, reason) => push({ type: "close", code, reason: reason.toString("utf8") }));
	ws.on("error", (err) => push({ type: "error", err }));
	await new Promise((resolve, reject) => {
		ws.once("open", resolve);
		ws.once("error", reject);
		ws.once("unexpected-response", (req, res) => {
			reject(new Error(`handshake answered ${res.statusCode}`));
			req.destroy();
		});
	});
	// next(pred, ms): the first event (from the start of the queue) that pred
	// accepts, or a close or error, or {type: "timeout"}.
	async function next(pred, ms) {
		const end = Date.now() + ms;
		for (;;) {
			const i = events.findIndex((ev) => ev.type !== "message" || pred(ev));
			if (i >= 0) return events.splice(i, 1)[0];
			const left = end - Date.now();
			if (left <= 0) return { type: "timeout" };
			await new Promise((r) => {
				wake = r;
				setTimeout(r, left);
			});
			wake = null;
		}
	}
	return { ws, next };
}
const json = (text) => {
	try {
		return JSON.parse(text);
	} catch {
		return undefined;
	}
};
// A JSON-RPC error reply (id null or absent, as for a parse error), or any message naming an error.
const isErrorReply = (ev) => {
	const m = json(ev.text);
	return m !== undefined && m !== null && typeof m === "object" && typeof m.error?.code === "number";
};
function describe(ev) {
	if (ev.type === "message") return `message ${fmt(ev.text)}`;
	if (ev.type === "close") return `close ${ev.code}${ev.reason ? ` (${ev.reason})` : ""}`;
	if (ev.type === "error") return `socket error ${why(ev.err)}`;
	return "nothing (timeout)";
}
// stillServes(id): kilnd answers a fresh Sandbox.connect and runs sh in it.
async function stillServes(id, what) {
	const c = await withTimeout(connectTracked(id), 60_000, `${what}: Sandbox.connect`);
	try {
		eq(await c.sh`echo alive`.text(), "alive\n", `${what}: sh on a new connection`);
	} finally {
		await closeQuietly(c);
	}
}

check("hostile: text ping is answered with pong", ["main"], async ({ main }) => {
	const { ws, next } = await rawConnect(main.id);
	try {
		ws.send("ping");
		const ev = await next((e) => e.text === "pong", 10_000);
		assert(ev.type === "message", `after "ping": ${describe(ev)}`);
	} finally {
		ws.terminate();
	}
});

check("hostile: an unknown method gets JSON-RPC error -32601 with the same numeric id", ["main"], async ({ main }) => {
	const { ws, next } = await rawConnect(main.id);
	try {
		for (const id of [0, 4242]) {
			ws.send(JSON.stringify({ jsonrpc: "2.0", id, method: "kilnSdkNoSuchMethod", params: {} }));
			const ev = await next((e) => json(e.text)?.id !== undefined && json(e.text)?.id !== null, 15_000);
			assert(ev.type === "message", `id ${id}: ${describe(ev)}`);
			const m = json(ev.text);
			eq([m.jsonrpc, m.id, m.error?.code], ["2.0", id, -32601], `reply to id ${id}: [jsonrpc, id, error.code]`);
		}
	} finally {
		ws.terminate();
	}
});

// Accept a JSON-RPC error reply, or a close frame (not 1006, a dropped TCP
// connection); silence for 10 s fails.
function answeredOrClosed(ev, what) {
	if (ev.type === "message") assert(isErrorReply(ev), `${what}: ${describe(ev)}`);
	else assert(ev.type === "close" && ev.code !== 1006, `${what}: ${describe(ev)}`);
	return describe(ev);
}

check("hostile: malformed JSON gets a JSON-RPC error or a clean close; kilnd still serves", ["main"], async ({ main }) => {
	const { ws, next } = await rawConnect(main.id);
	try {
		ws.send('{"jsonrpc":"2.0","id":1,"method":"stat","params":{"path":"/"');
		note(answeredOrClosed(await next(isErrorReply, 10_000), "after malformed JSON"));
	} finally {
		ws.terminate();
	}
	await stillServes(main.id, "afterwards");
});

check("hostile: JSON that is not a JSON-RPC request gets errors or a clean close; kilnd still serves", ["main"], async ({ main }) => {
	// [text, whether a reply (or a clean close) is due]: a notification has no reply.
	const bad = [
		["[1,2,3]", true],
		["42", true],
		["null", true],
		['{"jsonrpc":"2.0","id":"7","method":5}', true],
		['{"jsonrpc":"1.0","id":8,"method":"stat","params":{"path":"/"}}', true],
		['{"jsonrpc":"2.0","id":9,"method":"stat","params":"not an object"}', true],
		['{"jsonrpc":"2.0","id":10,"method":"stat","params":{"path":42}}', true],
		['{"jsonrpc":"2.0","id":11,"method":"readFile","params":{}}', true],
		['{"jsonrpc":"2.0","id":12,"method":"envGet","params":{"key":"' + "K".repeat(100_000) + '"}}', true],
		['{"jsonrpc":"2.0","method":"$sandbox.stream.enqueue","params":{"streamId":999999,"data":"!!"}}', false],
		['{"jsonrpc":"2.0","method":"$sandbox.stream.end","params":{"streamId":"x"}}', false],
	];
	const seen = [];
	for (const [text, replyDue] of bad) {
		const what = `after ${fmt(text.slice(0, 70))}`;
		const { ws, next } = await rawConnect(main.id);
		try {
			ws.send(text);
			const ev = await next(() => true, replyDue ? 10_000 : 2_000);
			if (ev.type === "message") {
				const m = json(ev.text);
				assert(m && typeof m === "object" && ("error" in m || "result" in m), `${what}: ${describe(ev)}`);
				seen.push(m.error?.code ?? (m.result?.error ? `result.error ${m.result.error.constructorName}` : "result"));
			} else if (ev.type === "timeout") {
				assert(!replyDue, `${what}: no reply and no close in 10 s`);
				seen.push("none");
			} else {
				assert(ev.type === "close" && ev.code !== 1006, `${what}: ${describe(ev)}`);
				seen.push(`close ${ev.code}`);
			}
		} finally {
			ws.terminate();
		}
	}
	note(`answers: ${seen.join(", ")}`);
	await stillServes(main.id, "afterwards");
});

check("hostile: a 20 MiB text frame of garbage is refused or answered; kilnd still serves", ["main"], async ({ main }) => {
	const { ws, next } = await rawConnect(main.id, { deflate: false });
	try {
		const garbage = randomBytes(15 * 1024 * 1024).toString("base64").slice(0, 20 * 1024 * 1024);
		ws.send(garbage, () => {});
		const ev = await next(() => true, 60_000);
		assert(ev.type === "close" || ev.type === "error" || isErrorReply(ev), `after 20 MiB of garbage: ${describe(ev)}`);
		note(describe(ev));
	} finally {
		ws.terminate();
	}
	await stillServes(main.id, "afterwards");
}, 2 * CHECK_MS);

check(`hostile: ${NCONNECT} concurrent Sandbox.connect each run sh echo N`, ["main"], async ({ main }) => {
	const conns = [];
	const t0 = Date.now();
	try {
		const results = await Promise.allSettled(
			Array.from({ length: NCONNECT }, async (_, i) => {
				const c = await connectTracked(main.id); // the string form of connect
				conns.push(c);
				const out = await c.sh`echo ${i}`.text();
				if (out !== `${i}\n`) throw new CheckFailed(`connection ${i} printed ${fmt(out)}`);
			}),
		);
		const bad = results.filter((r) => r.status === "rejected");
		note(`${NCONNECT - bad.length} of ${NCONNECT} answered in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
		assert(bad.length === 0, `${bad.length} of ${NCONNECT} failed; first: ${why(bad[0]?.reason)}`);
	} finally {
		await Promise.allSettled(conns.map((c) => closeQuietly(c, 35_000)));
	}
}, 3 * CHECK_MS);

// The spawn result comes back, then the client stops reading (its TCP window
// fills while yes keeps writing) for 10 s and leaves. kilnd must not buffer
// without bound (sdk.sh checks its RSS) nor stall its other clients.
check("hostile: a client that spawns yes and never reads for 10 s, then leaves, does not stop kilnd", ["main"], async ({ main }) => {
	const { ws, next } = await rawConnect(main.id);
	let pid = null;
	try {
		ws.send(JSON.stringify({ jsonrpc: "2.0", id: 0, method: "spawn", params: { command: "yes", stdout: "piped", stderr: "null" } }));
		const ev = await next((e) => json(e.text)?.id === 0, 30_000);
		assert(ev.type === "message", `spawn of yes: ${describe(ev)}`);
		pid = json(ev.text)?.result?.ok?.pid;
		assert(typeof pid === "number", `spawn of yes answered ${fmt(ev.text)}`);
		ws.pause();
		await sleep(10_000);
		ws.close();
		await sleep(2_000);
	} finally {
		ws.terminate();
	}
	// kilnd itself first (no guest involved), then a guest round trip.
	const list = await withTimeout(new Client().sandboxes.list({ labels: { run: RUN, role: "main" } }), 30_000, "sandboxes.list");
	eq(list.map((s) => s.status), ["running"], "main's status after the stalled client");
	// The process outlives its socket in a duration sandbox: stop it (no procps in a minimal Debian).
	const n = await main.sh`n=0; for p in /proc/[0-9]*; do [ "$(cat $p/comm 2>/dev/null)" = yes ] && kill -9 \${p#/proc/} && n=$((n + 1)); done; echo $n`.text();
	note(`yes processes killed afterwards: ${n.trim()}`);
	await stillServes(main.id, "afterwards");
});

// ---- running them -----------------------------------------------------------------

async function killOne(id, sb) {
	try {
		await withTimeout(sb.kill(), 30_000, `kill() of ${id}`);
		return;
	} catch (e) {
		if (e instanceof ConnectionEstablishmentError) return; // already gone
		// The object may be closed or broken: try again through a fresh connection.
		let c;
		try {
			c = await withTimeout(connectTracked(id), 30_000, `connect to ${id}`);
		} catch (e2) {
			if (e2 instanceof ConnectionEstablishmentError && e2.status >= 400 && e2.status < 500) return; // gone
			throw e2;
		}
		await withTimeout(c.kill(), 30_000, `kill() of ${id} through a new connection`);
	}
}

async function cleanup() {
	for (const ws of rawSockets) ws.terminate();
	const problems = [];
	for (const [id, sb] of created) {
		if (killed.has(id)) continue;
		try {
			await killOne(id, sb);
			killed.add(id);
		} catch (e) {
			problems.push(`${id}: ${why(e)}`);
		}
	}
	// Anything labelled with this run that the SDK never handed back (e.g. a
	// create whose env RPCs failed after the sandbox was made).
	try {
		const list = await withTimeout(new Client().sandboxes.list({ labels: { run: RUN } }), 20_000, "sandboxes.list");
		for (const s of list) {
			if (s.status !== "running" || killed.has(s.id)) continue;
			try {
				await killOne(s.id, await withTimeout(connectTracked(s.id), 30_000, `connect to ${s.id}`));
				killed.add(s.id);
			} catch (e) {
				problems.push(`${s.id} (listed): ${why(e)}`);
			}
		}
	} catch (e) {
		note(`cleanup: could not list this run's sandboxes: ${why(e)}`);
	}
	await Promise.allSettled([...handles].map((h) => closeQuietly(h, 5_000)));
	if (localTmp) await fsp.rm(localTmp, { recursive: true, force: true }).catch(() => {});
	note(`cleanup: ${created.size} sandbox(es) created, ${[...created.keys()].filter((id) => killed.has(id)).length} killed`);
	if (problems.length) throw new CheckFailed(`not killed: ${problems.join("; ")}`);
}

async function main() {
	const args = process.argv.slice(2);
	if (args.includes("--list")) {
		for (const c of checks) console.log(c.name);
		console.log("cleanup: every sandbox this run created is killed");
		return 0;
	}
	if (!ENDPOINT || !TOKEN) {
		console.log("Bail out! set DENO_SANDBOX_ENDPOINT (kilnd's http://ADDR:PORT) and DENO_DEPLOY_TOKEN (a kilnd token)");
		return 2;
	}
	// Client() and sandboxes.list use DENO_DEPLOY_ENDPOINT; kilnd serves both route families.
	process.env.DENO_DEPLOY_ENDPOINT ??= ENDPOINT;
	const selected = args.length ? checks.filter((c) => args.some((a) => c.name.includes(a))) : checks;
	console.log(`1..${selected.length + 1}`);
	note(`run ${RUN} against ${ENDPOINT} (sandbox) and ${process.env.DENO_DEPLOY_ENDPOINT} (api), @deno/sandbox ${requireFromSdk("../package.json").version}, node ${process.version}`);
	let n = 0;
	let failed = 0;
	const report = (ok, name, detail, extra) => {
		n++;
		if (ok) console.log(`ok ${n} - ${name}${detail ? ` # ${detail}` : ""}`);
		else {
			failed++;
			console.log(`not ok ${n} - ${name} # ${detail}`);
			if (extra) note(`  ${extra.split("\n").slice(0, 8).join("\n  ")}`);
		}
	};
	for (const c of selected) {
		if (Date.now() > DEADLINE) {
			report(false, c.name, "not run: the run's deadline (SDK_TEST_DEADLINE) has passed");
			continue;
		}
		const ctx = {};
		let missing = null;
		for (const f of c.needs) {
			try {
				ctx[f] = await need(f);
			} catch (e) {
				missing = `needs ${f}, which failed: ${why(e)}`;
				break;
			}
		}
		if (missing) {
			report(false, c.name, missing);
			continue;
		}
		const t0 = Date.now();
		try {
			await withTimeout(Promise.resolve().then(() => c.fn(ctx)), c.timeoutMs, "the check");
			report(true, c.name, `${((Date.now() - t0) / 1000).toFixed(1)}s`);
		} catch (e) {
			report(false, c.name, `${why(e)} (after ${((Date.now() - t0) / 1000).toFixed(1)}s)`,
				e instanceof CheckFailed ? null : e?.stack);
		}
	}
	try {
		await withTimeout(cleanup(), 5 * 60_000, "cleanup");
		report(true, "cleanup: every sandbox this run created is killed", "");
	} catch (e) {
		report(false, "cleanup: every sandbox this run created is killed", why(e));
	}
	note(`${n - failed} passed, ${failed} failed`);
	return failed ? 1 : 0;
}

// A failure must never end the run: the SDK throws from event listeners in places.
process.on("unhandledRejection", (e) => note(`unhandled rejection: ${why(e)}`));
process.on("uncaughtException", (e) => note(`uncaught exception: ${why(e)}`));

// Exit explicitly: open sockets' 2 s ping timers would keep Node alive.
main().then((code) => process.exit(code), (e) => {
	console.log(`Bail out! ${why(e)}`);
	process.exit(2);
});
