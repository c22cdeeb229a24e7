/*
 * The registry's sandboxes, their events and usage (registry.h), and the
 * start time that tells a VMM from a process that reused its pid.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "registry_int.h"

#define REG_EVENTS_MAX	10000

static const char *const state_names[] = {
	[REG_CREATING] = "creating", [REG_RUNNING] = "running", [REG_STOPPING] = "stopping",
	[REG_STOPPED] = "stopped", [REG_FAILED] = "failed",
};
static const char *const end_names[] = {
	[REG_END_NONE] = "", [REG_END_KILLED] = "killed", [REG_END_TIMED_OUT] = "timed_out",
	[REG_END_OOM] = "oom", [REG_END_VMM_CRASHED] = "vmm_crashed", [REG_END_CREATE_FAILED] = "create_failed",
	[REG_END_SESSION_ENDED] = "session_ended", [REG_END_LOST] = "lost", [REG_END_SHUTDOWN] = "shutdown",
};
static const char *const timeout_names[] = {
	[REG_TIMEOUT_SESSION] = "session", [REG_TIMEOUT_DURATION] = "duration",
};
_Static_assert(sizeof(state_names) / sizeof(state_names[0]) == REG_STATE_COUNT, "a state without a name");
_Static_assert(sizeof(end_names) / sizeof(end_names[0]) == REG_END_COUNT, "an end reason without a name");
_Static_assert(sizeof(timeout_names) / sizeof(timeout_names[0]) == REG_TIMEOUT_COUNT, "a timeout without a name");

#define SB_COLS "SELECT s.id, s.state, s.memory_mb, s.vcpus, s.timeout_kind, s.timeout_ms, s.stop_at," \
	" s.created_at, s.ended_at, s.end_reason, s.vmm_pid, s.vmm_start_time, s.control_path," \
	" s.vsock_path, s.run_dir, u.cpu_ns, u.mem_mb_ms, s.image, s.net FROM sandboxes s LEFT JOIN usage u ON u.sandbox_id = s.id"
/* A label filter slot: unused slots bind NULL. Uses the (key, value) index once per query. */
#define LABEL_SLOT(k, v) " AND (?" #k " IS NULL OR s.id IN (SELECT sandbox_id FROM sandbox_labels" \
	" WHERE key = ?" #k " AND value = ?" #v "))"
_Static_assert(REG_LABELS_MAX == 5, "SQL_SB_LIST has five label filter slots");

static const char SQL_SB_INSERT[] = "INSERT INTO sandboxes (id, state, memory_mb, vcpus, timeout_kind, timeout_ms, stop_at,"
	" created_at, image, net, allow_net, secrets) VALUES (?1, 'creating', ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)";
static const char SQL_SB_ALLOW[] = "SELECT allow_net FROM sandboxes WHERE id = ?1";
static const char SQL_SB_SECRETS[] = "SELECT secrets FROM sandboxes WHERE id = ?1";
static const char SQL_LABEL_INSERT[] = "INSERT INTO sandbox_labels (sandbox_id, key, value) VALUES (?1, ?2, ?3)";
static const char SQL_LABELS_JSON[] = "UPDATE sandboxes SET labels = (SELECT json_group_object(key, value)"
	" FROM sandbox_labels WHERE sandbox_id = ?1) WHERE id = ?1";
/* Who holds a volume: its writer if any, else a reader. */
static const char SQL_ATTACH_HELD[] = "SELECT a.sandbox_id, a.readonly FROM volume_attachments a WHERE a.volume = ?1"
	" ORDER BY a.readonly LIMIT 1";
static const char SQL_VOL_EXISTS[] = "SELECT count(*) FROM volumes WHERE name = ?1";
static const char SQL_ATTACH_INSERT[] = "INSERT INTO volume_attachments (sandbox_id, volume, path, readonly)"
	" VALUES (?1, ?2, ?3, ?4)";
static const char SQL_ATTACH_RELEASE[] = "DELETE FROM volume_attachments WHERE sandbox_id = ?1";
static const char SQL_SB_VOLS[] = "SELECT volume, path, readonly FROM volume_attachments WHERE sandbox_id = ?1"
	" ORDER BY path";
static const char SQL_USAGE_INSERT[] = "INSERT INTO usage (sandbox_id) VALUES (?1)";
static const char SQL_EVENT_INSERT[] = "INSERT INTO events (sandbox_id, at, kind, detail) VALUES (?1, ?2, ?3, ?4)";
static const char SQL_SB_STATE[] = "SELECT state, end_reason, stop_at FROM sandboxes WHERE id = ?1";
static const char SQL_SB_SET_STATE[] = "UPDATE sandboxes SET state = ?2, end_reason = ?3, ended_at = ?4 WHERE id = ?1";
static const char SQL_SB_SET_VMM[] = "UPDATE sandboxes SET vmm_pid = ?2, vmm_start_time = ?3, control_path = ?4,"
	" vsock_path = ?5, run_dir = ?6 WHERE id = ?1";
static const char SQL_SB_SET_STOP[] = "UPDATE sandboxes SET stop_at = ?2 WHERE id = ?1";
static const char SQL_SB_GET[] = SB_COLS " WHERE s.id = ?1";
static const char SQL_SB_LIST[] = SB_COLS " WHERE s.state IN (?1, ?2, ?3, ?4, ?5)" LABEL_SLOT(6, 7) LABEL_SLOT(8, 9)
	LABEL_SLOT(10, 11) LABEL_SLOT(12, 13) LABEL_SLOT(14, 15) " ORDER BY s.created_at, s.id";
static const char SQL_SB_LABELS[] = "SELECT key, value FROM sandbox_labels WHERE sandbox_id = ?1 ORDER BY key";
static const char SQL_SB_COUNT[] = "SELECT state, count(*) FROM sandboxes GROUP BY state";
static const char SQL_SB_PRUNE[] = "DELETE FROM sandboxes WHERE state IN ('stopped', 'failed') AND ended_at < ?1";
static const char SQL_EVENT_LIST[] = "SELECT seq, at, kind, detail FROM events WHERE sandbox_id = ?1 AND seq > ?2"
	" ORDER BY seq LIMIT ?3";
static const char SQL_USAGE_ADD[] = "UPDATE usage SET cpu_ns = cpu_ns + ?2, mem_mb_ms = mem_mb_ms + ?3 WHERE sandbox_id = ?1"
	" AND cpu_ns <= 9223372036854775807 - ?2 AND mem_mb_ms <= 9223372036854775807 - ?3";

const char *reg_state_name(enum reg_state s)
{
	return (unsigned)s < REG_STATE_COUNT ? state_names[s] : NULL;
}

const char *reg_end_name(enum reg_end e)
{
	return (unsigned)e < REG_END_COUNT ? end_names[e] : NULL;
}

const char *reg_timeout_name(enum reg_timeout t)
{
	return (unsigned)t < REG_TIMEOUT_COUNT ? timeout_names[t] : NULL;
}

int reg_sandbox_id_check(const char *id, struct kiln_err *err)
{
	char b[48];

	if (!id)
		return kiln_fail(err, EINVAL, "sandbox id is missing");
	if (strnlen(id, REG_ID_MAX) != REG_ID_LEN || memcmp(id, "sbx_", 4) || id[7] != '_' ||
	    !reg_in_set(id + 4, 3, "abcdefghijklmnopqrstuvwxyz") || !reg_in_set(id + 8, 20, reg_b32))
		return kiln_fail(err, EINVAL, "sandbox id \"%s\" is malformed (expected sbx_, 3 letters, _ and 20 of %s)",
				 reg_shown(id, b), reg_b32);
	return 0;
}

static int labels_check(const struct reg_label *l, size_t n, const char *what, struct kiln_err *err)
{
	int r;

	if (n > REG_LABELS_MAX)
		return kiln_fail(err, EINVAL, "%zu %s given (at most %d)", n, what, REG_LABELS_MAX);
	for (size_t i = 0; i < n; i++) {
		if (strnlen(l[i].key, sizeof(l[i].key)) == sizeof(l[i].key) ||
		    strnlen(l[i].value, sizeof(l[i].value)) == sizeof(l[i].value))
			return kiln_fail(err, EINVAL, "label %zu is not terminated", i);
		if ((r = reg_str_check("label key", l[i].key, 1, REG_LABEL_KEY_MAX, err)) ||
		    (r = reg_str_check("label value", l[i].value, 0, REG_LABEL_VALUE_MAX, err)))
			return r;
		for (size_t j = 0; j < i; j++)
			if (strcmp(l[i].key, l[j].key) == 0)
				return kiln_fail(err, EINVAL, "label key \"%s\" is given twice", l[i].key);
	}
	return 0;
}

int reg_sandbox_id_new(const char *region, char id[REG_ID_MAX], struct kiln_err *err)
{
	int r;

	if (!region || strnlen(region, 4) != 3 || !reg_in_set(region, 3, "abcdefghijklmnopqrstuvwxyz"))
		return kiln_fail(err, EINVAL, "region must be 3 lowercase letters, like \"lcl\"");
	memcpy(id, "sbx_", 4);
	memcpy(id + 4, region, 3);
	id[7] = '_';
	if ((r = reg_random_chars(id + 8, 20, reg_b32, 32, err)))
		return r;
	return 0;
}

/* ---- sandboxes ------------------------------------------------------------------- */

static int event_insert(struct reg *r, const char *id, const char *kind, const char *detail, int64_t now_ms,
			struct kiln_err *err)
{
	sqlite3_stmt *s;
	int rc, ret;

	if ((ret = reg_prep(r, SQL_EVENT_INSERT, &s, "recording an event", err)))
		return ret;
	if ((rc = reg_bind_text(s, 1, id)) || (rc = reg_bind_int(s, 2, now_ms)) || (rc = reg_bind_text(s, 3, kind)) ||
	    (rc = reg_bind_text(s, 4, detail ? detail : "")) || (rc = reg_run(s)))
		return reg_sqlfail(r, rc, "recording an event", err);
	return 0;
}

/*
 * In the insert's transaction: attach a volume, one writer or any number of
 * readers at a time. Names who holds it when it cannot be had.
 */
static int attach(struct reg *r, const char *id, const struct reg_attach *a, struct kiln_err *err)
{
	const char *what = "attaching a volume";
	char holder[REG_ID_MAX] = "";
	sqlite3_stmt *s;
	int rc, ret, held_ro = 0, held = 0;

	if ((ret = reg_volume_name_check(a->volume, err)))
		return ret;
	if (a->path[0] != '/' || strnlen(a->path, REG_VOL_PATH_MAX) >= REG_VOL_PATH_MAX || !a->path[1])
		return kiln_fail(err, EINVAL, "volume %s: mount path must be absolute and not /", a->volume);
	if ((ret = reg_prep(r, SQL_VOL_EXISTS, &s, what, err)))
		return ret;
	if ((rc = reg_bind_text(s, 1, a->volume)) || (rc = sqlite3_step(s)) != SQLITE_ROW)
		return reg_sqlfail(r, rc, what, err);
	if (sqlite3_column_int64(s, 0) == 0) {
		sqlite3_reset(s);
		return kiln_fail(err, ENOENT, "no volume %s on this node (kiln volume create %s SIZE makes one)", a->volume,
				 a->volume);
	}
	sqlite3_reset(s);
	if ((ret = reg_prep(r, SQL_ATTACH_HELD, &s, what, err)))
		return ret;
	if ((rc = reg_bind_text(s, 1, a->volume)))
		return reg_sqlfail(r, rc, what, err);
	rc = sqlite3_step(s);
	if (rc == SQLITE_ROW) {
		held = 1;
		held_ro = sqlite3_column_int(s, 1);
		if ((ret = reg_col_text(r, s, 0, holder, sizeof(holder), err)))
			return ret;
	} else if (rc != SQLITE_DONE) {
		return reg_sqlfail(r, rc, what, err);
	}
	sqlite3_reset(s);
	if (held && !held_ro)
		return kiln_fail(err, EBUSY, "volume %s is attached writable to sandbox %s: one writer at a time; "
				 "attach it once that sandbox ends", a->volume, holder);
	if (held && !a->readonly)
		return kiln_fail(err, EBUSY, "volume %s is attached read-only to sandbox %s (perhaps others too): a writable "
				 "attach waits until none has it; or attach it read-only (\"readonly\": true)", a->volume, holder);
	if ((ret = reg_prep(r, SQL_ATTACH_INSERT, &s, what, err)))
		return ret;
	if ((rc = reg_bind_text(s, 1, id)) || (rc = reg_bind_text(s, 2, a->volume)) ||
	    (rc = reg_bind_text(s, 3, a->path)) || (rc = reg_bind_int(s, 4, a->readonly ? 1 : 0)) ||
	    (rc = reg_run(s))) {
		if ((rc & 0xff) == SQLITE_CONSTRAINT)
			return kiln_fail(err, EINVAL, "two volumes at %s", a->path);
		return reg_sqlfail(r, rc, what, err);
	}
	return 0;
}

int reg_sandbox_insert(struct reg *r, const struct reg_sandbox *sb, int64_t now_ms, struct kiln_err *err)
{
	const char *what = "recording a new sandbox";
	sqlite3_stmt *s;
	int rc, ret;

	if ((ret = reg_sandbox_id_check(sb->id, err)) || (ret = reg_shape_check(sb->memory_mb, sb->vcpus, err)) ||
	    (ret = reg_image_check(sb->image, err)) || (ret = labels_check(sb->labels, sb->n_labels, "labels", err)))
		return ret;
	if ((unsigned)sb->timeout_kind >= REG_TIMEOUT_COUNT || sb->timeout_ms < 0 || sb->stop_at_ms < 0 ||
	    (sb->timeout_kind == REG_TIMEOUT_DURATION && sb->timeout_ms == 0))
		return kiln_fail(err, EINVAL, "sandbox %s: timeout kind %d, %lld ms, stop_at %lld is not a valid timeout",
				 sb->id, (int)sb->timeout_kind, (long long)sb->timeout_ms, (long long)sb->stop_at_ms);
	if ((ret = reg_begin(r, true, what, err)))
		return ret;
	if ((ret = reg_prep(r, SQL_SB_INSERT, &s, what, err)))
		return reg_abort(r, ret);
	if ((rc = reg_bind_text(s, 1, sb->id)) || (rc = reg_bind_int(s, 2, sb->memory_mb)) ||
	    (rc = reg_bind_int(s, 3, sb->vcpus)) ||
	    (rc = reg_bind_text(s, 4, timeout_names[sb->timeout_kind])) || (rc = reg_bind_int(s, 5, sb->timeout_ms)) ||
	    (rc = reg_bind_opt(s, 6, sb->stop_at_ms)) || (rc = reg_bind_int(s, 7, now_ms)) ||
	    (rc = reg_bind_text(s, 8, sb->image)) || (rc = reg_bind_int(s, 9, sb->net != 0)) ||
	    (rc = reg_bind_text(s, 10, sb->allow_net ? sb->allow_net : "[]")) ||
	    (rc = reg_bind_text(s, 11, sb->secrets ? sb->secrets : "[]")) || (rc = reg_run(s)))
		return reg_abort(r, reg_sqlfail(r, rc, what, err));
	for (unsigned i = 0; i < sb->n_labels; i++) {
		if ((ret = reg_prep(r, SQL_LABEL_INSERT, &s, what, err)))
			return reg_abort(r, ret);
		if ((rc = reg_bind_text(s, 1, sb->id)) || (rc = reg_bind_text(s, 2, sb->labels[i].key)) ||
		    (rc = reg_bind_text(s, 3, sb->labels[i].value)) || (rc = reg_run(s)))
			return reg_abort(r, reg_sqlfail(r, rc, what, err));
	}
	if ((ret = reg_prep(r, SQL_LABELS_JSON, &s, what, err)))
		return reg_abort(r, ret);
	if ((rc = reg_bind_text(s, 1, sb->id)) || (rc = reg_run(s)))
		return reg_abort(r, reg_sqlfail(r, rc, what, err));
	if ((ret = reg_prep(r, SQL_USAGE_INSERT, &s, what, err)))
		return reg_abort(r, ret);
	if ((rc = reg_bind_text(s, 1, sb->id)) || (rc = reg_run(s)))
		return reg_abort(r, reg_sqlfail(r, rc, what, err));
	if (sb->n_vols > REG_VOLS_MAX)
		return reg_abort(r, kiln_fail(err, EINVAL, "%u volumes given (at most %d)", sb->n_vols, REG_VOLS_MAX));
	for (unsigned i = 0; i < sb->n_vols; i++)
		if ((ret = attach(r, sb->id, &sb->vols[i], err)))
			return reg_abort(r, ret);
	if ((ret = event_insert(r, sb->id, "created", NULL, now_ms, err)))
		return reg_abort(r, ret);
	return reg_commit(r, what, err);
}

/* Inside a transaction: the sandbox's state, end reason and stop_at; -ENOENT if unknown. */
static int state_of(struct reg *r, const char *id, enum reg_state *state, enum reg_end *reason, int64_t *stop_at,
		    struct kiln_err *err)
{
	sqlite3_stmt *s;
	int rc, st, end = REG_END_NONE, ret;

	if ((ret = reg_prep(r, SQL_SB_STATE, &s, "reading a sandbox's state", err)))
		return ret;
	if ((rc = reg_bind_text(s, 1, id)))
		return reg_sqlfail(r, rc, "reading a sandbox's state", err);
	rc = sqlite3_step(s);
	if (rc == SQLITE_DONE)
		return kiln_fail(err, ENOENT, "sandbox %s not found", id);
	if (rc != SQLITE_ROW)
		return reg_sqlfail(r, rc, "reading a sandbox's state", err);
	if ((ret = reg_col_enum(r, s, 0, state_names, REG_STATE_COUNT, &st, err)) ||
	    (sqlite3_column_type(s, 1) != SQLITE_NULL &&
	     (ret = reg_col_enum(r, s, 1, end_names, REG_END_COUNT, &end, err))))
		return ret;
	*state = st;
	*reason = end;
	*stop_at = sqlite3_column_int64(s, 2);
	sqlite3_reset(s);
	return 0;
}

/* Inside a transaction: 0 if the sandbox is there, -ENOENT if not. */
static int exists(struct reg *r, const char *id, struct kiln_err *err)
{
	enum reg_state state;
	enum reg_end reason;
	int64_t stop_at;

	return state_of(r, id, &state, &reason, &stop_at, err);
}

static bool ended(enum reg_state s)
{
	return s == REG_STOPPED || s == REG_FAILED;
}

int reg_sandbox_set_state(struct reg *r, const char *id, enum reg_state state, enum reg_end reason,
			  const char *detail, int64_t now_ms, struct kiln_err *err)
{
	const char *what = "changing a sandbox's state";
	enum reg_state old;
	enum reg_end had;
	sqlite3_stmt *s;
	int64_t stop_at;
	int rc, ret;

	if ((ret = reg_sandbox_id_check(id, err)) ||
	    (detail && (ret = reg_str_check("event detail", detail, 0, REG_DETAIL_MAX - 1, err))))
		return ret;
	if ((unsigned)state >= REG_STATE_COUNT || (unsigned)reason >= REG_END_COUNT)
		return kiln_fail(err, EINVAL, "sandbox %s: state %d or end reason %d is out of range", id, state, reason);
	if (reason != REG_END_NONE && state < REG_STOPPING)
		return kiln_fail(err, EINVAL, "sandbox %s: an end reason (%s) goes with stopping, stopped or failed, not %s",
				 id, end_names[reason], state_names[state]);
	if ((ret = reg_begin(r, true, what, err)))
		return ret;
	if ((ret = state_of(r, id, &old, &had, &stop_at, err)))
		return reg_abort(r, ret);
	if (ended(old)) {
		ret = kiln_fail(err, EALREADY, "sandbox %s has already ended (%s, %s)", id, state_names[old], end_names[had]);
		return reg_abort(r, ret);
	}
	if (state <= old) {
		ret = kiln_fail(err, EINVAL, "sandbox %s is %s; it cannot become %s", id, state_names[old], state_names[state]);
		return reg_abort(r, ret);
	}
	if (reason == REG_END_NONE)
		reason = had;
	if (ended(state) && reason == REG_END_NONE) {
		ret = kiln_fail(err, EINVAL, "sandbox %s: becoming %s needs an end reason", id, state_names[state]);
		return reg_abort(r, ret);
	}
	if ((ret = reg_prep(r, SQL_SB_SET_STATE, &s, what, err)))
		return reg_abort(r, ret);
	if ((rc = reg_bind_text(s, 1, id)) || (rc = reg_bind_text(s, 2, state_names[state])) ||
	    (rc = reg_bind_text(s, 3, reason ? end_names[reason] : NULL)) ||
	    (rc = reg_bind_opt(s, 4, ended(state) ? now_ms : 0)) ||
	    (rc = reg_run(s)))
		return reg_abort(r, reg_sqlfail(r, rc, what, err));
	/* An ended sandbox lets go of its volumes. */
	if (ended(state)) {
		if ((ret = reg_prep(r, SQL_ATTACH_RELEASE, &s, what, err)))
			return reg_abort(r, ret);
		if ((rc = reg_bind_text(s, 1, id)) || (rc = reg_run(s)))
			return reg_abort(r, reg_sqlfail(r, rc, what, err));
	}
	/* A reason given now names the event ("killed"); else the state does ("running"). */
	if ((ret = event_insert(r, id, reason != had ? end_names[reason] : state_names[state], detail, now_ms, err)))
		return reg_abort(r, ret);
	return reg_commit(r, what, err);
}

/* Begin a write transaction on a sandbox that exists and has not ended. */
static int begin_live(struct reg *r, const char *id, const char *what, int64_t *stop_at, struct kiln_err *err)
{
	enum reg_state state;
	enum reg_end reason;
	int ret;

	if ((ret = reg_begin(r, true, what, err)))
		return ret;
	if ((ret = state_of(r, id, &state, &reason, stop_at, err)))
		return reg_abort(r, ret);
	if (ended(state))
		return reg_abort(r, kiln_fail(err, EALREADY, "sandbox %s has already ended (%s, %s)", id,
					     state_names[state], end_names[reason]));
	return 0;
}

int reg_sandbox_set_vmm(struct reg *r, const char *id, const struct reg_vmm *vmm, struct kiln_err *err)
{
	const char *what = "recording a sandbox's VMM";
	sqlite3_stmt *s;
	int64_t stop_at;
	int rc, ret;

	if ((ret = reg_sandbox_id_check(id, err)) ||
	    (ret = reg_path_check("control socket path", vmm->control_path, err)) ||
	    (ret = reg_path_check("vsock socket path", vmm->vsock_path, err)) ||
	    (ret = reg_path_check("run dir", vmm->run_dir, err)))
		return ret;
	if (vmm->pid <= 1 || vmm->start_time == 0 || vmm->start_time > INT64_MAX)
		return kiln_fail(err, EINVAL, "sandbox %s: VMM pid %d with start time %llu is not a VMM", id,
				 (int)vmm->pid, (unsigned long long)vmm->start_time);
	if ((ret = begin_live(r, id, what, &stop_at, err)))
		return ret;
	if ((ret = reg_prep(r, SQL_SB_SET_VMM, &s, what, err)))
		return reg_abort(r, ret);
	if ((rc = reg_bind_text(s, 1, id)) || (rc = reg_bind_int(s, 2, vmm->pid)) ||
	    (rc = reg_bind_int(s, 3, (int64_t)vmm->start_time)) ||
	    (rc = reg_bind_text(s, 4, vmm->control_path)) || (rc = reg_bind_text(s, 5, vmm->vsock_path)) ||
	    (rc = reg_bind_text(s, 6, vmm->run_dir)) || (rc = reg_run(s)))
		return reg_abort(r, reg_sqlfail(r, rc, what, err));
	return reg_commit(r, what, err);
}

int reg_sandbox_set_stop_at(struct reg *r, const char *id, int64_t stop_at_ms, int64_t now_ms, struct kiln_err *err)
{
	const char *what = "extending a sandbox";
	char detail[96];
	sqlite3_stmt *s;
	int64_t old;
	int rc, ret;

	if ((ret = reg_sandbox_id_check(id, err)))
		return ret;
	if (stop_at_ms <= 0)
		return kiln_fail(err, EINVAL, "sandbox %s: stop_at %lld ms is not a time", id, (long long)stop_at_ms);
	if ((ret = begin_live(r, id, what, &old, err)))
		return ret;
	if ((ret = reg_prep(r, SQL_SB_SET_STOP, &s, what, err)))
		return reg_abort(r, ret);
	if ((rc = reg_bind_text(s, 1, id)) || (rc = reg_bind_int(s, 2, stop_at_ms)) || (rc = reg_run(s)))
		return reg_abort(r, reg_sqlfail(r, rc, what, err));
	snprintf(detail, sizeof(detail), "{\"stop_at_ms\":%lld,\"previous_stop_at_ms\":%lld}",
		 (long long)stop_at_ms, (long long)old);
	if ((ret = event_insert(r, id, "extended", detail, now_ms, err)))
		return reg_abort(r, ret);
	return reg_commit(r, what, err);
}

/* Fill sb from a row of SB_COLS and its labels. */
static int read_sandbox(struct reg *r, sqlite3_stmt *s, void *elem, struct kiln_err *err)
{
	struct reg_sandbox *sb = elem;
	int st, tk, end = REG_END_NONE, rc, ret;
	sqlite3_stmt *l;

	memset(sb, 0, sizeof(*sb));
	if ((ret = reg_col_text(r, s, 0, sb->id, sizeof(sb->id), err)) ||
	    (ret = reg_col_enum(r, s, 1, state_names, REG_STATE_COUNT, &st, err)) ||
	    (ret = reg_col_enum(r, s, 4, timeout_names, REG_TIMEOUT_COUNT, &tk, err)) ||
	    (sqlite3_column_type(s, 9) != SQLITE_NULL && (ret = reg_col_enum(r, s, 9, end_names, REG_END_COUNT, &end, err))) ||
	    (ret = reg_col_text(r, s, 12, sb->vmm.control_path, REG_PATH_MAX, err)) ||
	    (ret = reg_col_text(r, s, 13, sb->vmm.vsock_path, REG_PATH_MAX, err)) ||
	    (ret = reg_col_text(r, s, 14, sb->vmm.run_dir, REG_PATH_MAX, err)) ||
	    (ret = reg_col_text(r, s, 17, sb->image, sizeof(sb->image), err)))
		return ret;
	sb->state = st;
	sb->timeout_kind = tk;
	sb->end_reason = end;
	sb->memory_mb = (uint32_t)sqlite3_column_int64(s, 2);
	sb->vcpus = (uint32_t)sqlite3_column_int64(s, 3);
	sb->timeout_ms = sqlite3_column_int64(s, 5);
	sb->stop_at_ms = sqlite3_column_int64(s, 6);
	sb->created_ms = sqlite3_column_int64(s, 7);
	sb->ended_ms = sqlite3_column_int64(s, 8);
	sb->vmm.pid = (pid_t)sqlite3_column_int64(s, 10);
	sb->vmm.start_time = (uint64_t)sqlite3_column_int64(s, 11);
	sb->cpu_ns = (uint64_t)sqlite3_column_int64(s, 15);
	sb->mem_mb_ms = (uint64_t)sqlite3_column_int64(s, 16);
	sb->net = sqlite3_column_int(s, 18) != 0;

	if ((ret = reg_prep(r, SQL_SB_LABELS, &l, "reading a sandbox's labels", err)))
		return ret;
	if ((rc = reg_bind_text(l, 1, sb->id)))
		return reg_sqlfail(r, rc, "reading a sandbox's labels", err);
	while ((rc = sqlite3_step(l)) == SQLITE_ROW) {
		if (sb->n_labels == REG_LABELS_MAX)
			return kiln_fail(err, EBADMSG, "registry %s: sandbox %s has over %d labels; the file was changed "
					 "outside kilnd: move it aside", r->path, sb->id, REG_LABELS_MAX);
		if ((ret = reg_col_text(r, l, 0, sb->labels[sb->n_labels].key, REG_LABEL_KEY_MAX + 1, err)) ||
		    (ret = reg_col_text(r, l, 1, sb->labels[sb->n_labels].value, REG_LABEL_VALUE_MAX + 1, err)))
			return ret;
		sb->n_labels++;
	}
	sqlite3_reset(l);
	if (rc != SQLITE_DONE)
		return reg_sqlfail(r, rc, "reading a sandbox's labels", err);
	if ((ret = reg_prep(r, SQL_SB_VOLS, &l, "reading a sandbox's volumes", err)))
		return ret;
	if ((rc = reg_bind_text(l, 1, sb->id)))
		return reg_sqlfail(r, rc, "reading a sandbox's volumes", err);
	while ((rc = sqlite3_step(l)) == SQLITE_ROW) {
		struct reg_attach *a = &sb->vols[sb->n_vols];

		if (sb->n_vols == REG_VOLS_MAX)
			return kiln_fail(err, EBADMSG, "registry %s: sandbox %s has over %d volumes; the file was changed "
					 "outside kilnd: move it aside", r->path, sb->id, REG_VOLS_MAX);
		if ((ret = reg_col_text(r, l, 0, a->volume, sizeof(a->volume), err)) ||
		    (ret = reg_col_text(r, l, 1, a->path, sizeof(a->path), err)))
			return ret;
		a->readonly = sqlite3_column_int(l, 2) != 0;
		sb->n_vols++;
	}
	sqlite3_reset(l);
	return rc == SQLITE_DONE ? 0 : reg_sqlfail(r, rc, "reading a sandbox's volumes", err);
}

int reg_sandbox_get(struct reg *r, const char *id, struct reg_sandbox *out, struct kiln_err *err)
{
	const char *what = "reading a sandbox";
	sqlite3_stmt *s;
	int rc, ret;

	if ((ret = reg_sandbox_id_check(id, err)))
		return ret;
	if ((ret = reg_begin(r, false, what, err)))
		return ret;
	if ((ret = reg_prep(r, SQL_SB_GET, &s, what, err)))
		return reg_abort(r, ret);
	if ((rc = reg_bind_text(s, 1, id)))
		return reg_abort(r, reg_sqlfail(r, rc, what, err));
	rc = sqlite3_step(s);
	if (rc == SQLITE_DONE)
		return reg_abort(r, kiln_fail(err, ENOENT, "sandbox %s not found", id));
	if (rc != SQLITE_ROW)
		return reg_abort(r, reg_sqlfail(r, rc, what, err));
	if ((ret = read_sandbox(r, s, out, err)))
		return reg_abort(r, ret);
	return reg_commit(r, what, err);
}

int reg_sandbox_list(struct reg *r, unsigned state_mask, const struct reg_label *filters, size_t n_filters,
		     struct reg_sandbox **out, size_t *n, struct kiln_err *err)
{
	const char *what = "listing sandboxes";
	sqlite3_stmt *s;
	void *arr;
	int rc, ret;

	*out = NULL;
	*n = 0;
	if ((ret = labels_check(filters, n_filters, "label filters", err)))
		return ret;
	if (state_mask == 0)
		state_mask = (1u << REG_STATE_COUNT) - 1;
	if (state_mask >> REG_STATE_COUNT)
		return kiln_fail(err, EINVAL, "state filter 0x%x names unknown states", state_mask);
	if ((ret = reg_begin(r, false, what, err)))
		return ret;
	if ((ret = reg_prep(r, SQL_SB_LIST, &s, what, err)))
		return reg_abort(r, ret);
	rc = SQLITE_OK;
	for (int i = 0; i < REG_STATE_COUNT && rc == SQLITE_OK; i++)
		rc = reg_bind_text(s, 1 + i, state_mask & REG_MASK(i) ? state_names[i] : NULL);
	for (size_t i = 0; i < n_filters && rc == SQLITE_OK; i++)
		if (!(rc = reg_bind_text(s, 6 + 2 * (int)i, filters[i].key)))
			rc = reg_bind_text(s, 7 + 2 * (int)i, filters[i].value);
	if (rc)
		return reg_abort(r, reg_sqlfail(r, rc, what, err));
	if ((ret = reg_list_rows(r, s, sizeof(**out), read_sandbox, &arr, n, what, err)))
		return ret;
	*out = arr;
	return 0;
}

int reg_sandbox_list_live(struct reg *r, struct reg_sandbox **out, size_t *n, struct kiln_err *err)
{
	return reg_sandbox_list(r, REG_LIVE, NULL, 0, out, n, err);
}

int reg_sandbox_count(struct reg *r, uint64_t counts[REG_STATE_COUNT], struct kiln_err *err)
{
	const char *what = "counting sandboxes";
	sqlite3_stmt *s;
	int rc, st, ret;

	memset(counts, 0, REG_STATE_COUNT * sizeof(counts[0]));
	if ((ret = reg_begin(r, false, what, err)))
		return ret;
	if ((ret = reg_prep(r, SQL_SB_COUNT, &s, what, err)))
		return reg_abort(r, ret);
	while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
		if ((ret = reg_col_enum(r, s, 0, state_names, REG_STATE_COUNT, &st, err)))
			return reg_abort(r, ret);
		counts[st] = (uint64_t)sqlite3_column_int64(s, 1);
	}
	if (rc != SQLITE_DONE)
		return reg_abort(r, reg_sqlfail(r, rc, what, err));
	return reg_commit(r, what, err);
}

int reg_sandbox_prune(struct reg *r, int64_t ended_before_ms, size_t *deleted, struct kiln_err *err)
{
	const char *what = "deleting ended sandboxes";
	sqlite3_stmt *s;
	int rc, ret;

	*deleted = 0;
	if ((ret = reg_begin(r, true, what, err)))
		return ret;
	if ((ret = reg_prep(r, SQL_SB_PRUNE, &s, what, err)))
		return reg_abort(r, ret);
	if ((rc = reg_bind_int(s, 1, ended_before_ms)) || (rc = reg_run(s)))
		return reg_abort(r, reg_sqlfail(r, rc, what, err));
	*deleted = (size_t)sqlite3_changes64(r->db);
	return reg_commit(r, what, err);
}

/* ---- events and usage ---------------------------------------------------------------- */

static int sb_text_col(struct reg *r, const char *sql, const char *what, const char *id, char **json,
		       struct kiln_err *err)
{
	const unsigned char *t;
	sqlite3_stmt *s;
	int rc, ret;

	*json = NULL;
	if ((ret = reg_sandbox_id_check(id, err)) || (ret = reg_begin(r, false, what, err)))
		return ret;
	if ((ret = reg_prep(r, sql, &s, what, err)))
		return reg_abort(r, ret);
	if ((rc = reg_bind_text(s, 1, id)))
		return reg_abort(r, reg_sqlfail(r, rc, what, err));
	rc = sqlite3_step(s);
	if (rc == SQLITE_DONE)
		return reg_abort(r, kiln_fail(err, ENOENT, "sandbox %s not found", id));
	if (rc != SQLITE_ROW)
		return reg_abort(r, reg_sqlfail(r, rc, what, err));
	t = sqlite3_column_text(s, 0);
	*json = strdup(t ? (const char *)t : "[]");
	sqlite3_reset(s);
	if (!*json)
		return reg_abort(r, kiln_fail(err, ENOMEM, "%s: out of memory", what));
	return reg_commit(r, what, err);
}

int reg_sandbox_allow_net(struct reg *r, const char *id, char **json, struct kiln_err *err)
{
	return sb_text_col(r, SQL_SB_ALLOW, "reading a sandbox's allow_net", id, json, err);
}

int reg_sandbox_secrets(struct reg *r, const char *id, char **json, struct kiln_err *err)
{
	return sb_text_col(r, SQL_SB_SECRETS, "reading a sandbox's secrets", id, json, err);
}

int reg_event_add(struct reg *r, const char *id, const char *kind, const char *detail, int64_t now_ms,
		  struct kiln_err *err)
{
	const char *what = "recording an event";
	char b[48];
	int ret;

	if ((ret = reg_sandbox_id_check(id, err)) ||
	    (detail && (ret = reg_str_check("event detail", detail, 0, REG_DETAIL_MAX - 1, err))))
		return ret;
	if (!kind || !*kind || strnlen(kind, REG_KIND_MAX) >= REG_KIND_MAX ||
	    !reg_in_set(kind, strlen(kind), "abcdefghijklmnopqrstuvwxyz_"))
		return kiln_fail(err, EINVAL, "event kind \"%s\" is malformed (1-31 of a-z and _)", kind ? reg_shown(kind, b) : "");
	if ((ret = reg_begin(r, true, what, err)))
		return ret;
	if ((ret = exists(r, id, err)) ||
	    (ret = event_insert(r, id, kind, detail, now_ms, err)))
		return reg_abort(r, ret);
	return reg_commit(r, what, err);
}

static int read_event(struct reg *r, sqlite3_stmt *s, void *elem, struct kiln_err *err)
{
	struct reg_event *ev = elem;
	int ret;

	ev->seq = sqlite3_column_int64(s, 0);
	ev->at_ms = sqlite3_column_int64(s, 1);
	if ((ret = reg_col_text(r, s, 2, ev->kind, sizeof(ev->kind), err)) ||
	    (ret = reg_col_text(r, s, 3, ev->detail, sizeof(ev->detail), err)))
		return ret;
	return 0;
}

int reg_event_list(struct reg *r, const char *id, int64_t after_seq, size_t max, struct reg_event **out,
		   size_t *n, struct kiln_err *err)
{
	const char *what = "listing events";
	void *arr;
	sqlite3_stmt *s;
	int rc, ret;

	*out = NULL;
	*n = 0;
	if ((ret = reg_sandbox_id_check(id, err)))
		return ret;
	if (max < 1 || max > REG_EVENTS_MAX)
		return kiln_fail(err, EINVAL, "event count %zu is out of range (1-%d)", max, REG_EVENTS_MAX);
	if ((ret = reg_begin(r, false, what, err)))
		return ret;
	if ((ret = exists(r, id, err)))
		return reg_abort(r, ret);
	if ((ret = reg_prep(r, SQL_EVENT_LIST, &s, what, err)))
		return reg_abort(r, ret);
	if ((rc = reg_bind_text(s, 1, id)) || (rc = reg_bind_int(s, 2, after_seq)) || (rc = reg_bind_int(s, 3, (int64_t)max)))
		return reg_abort(r, reg_sqlfail(r, rc, what, err));
	if ((ret = reg_list_rows(r, s, sizeof(**out), read_event, &arr, n, what, err)))
		return ret;
	*out = arr;
	return 0;
}

int reg_usage_add(struct reg *r, const char *id, uint64_t cpu_ns, uint64_t mem_mb_ms, struct kiln_err *err)
{
	const char *what = "adding usage";
	sqlite3_stmt *s;
	int rc, ret;

	if ((ret = reg_sandbox_id_check(id, err)))
		return ret;
	if (cpu_ns > INT64_MAX || mem_mb_ms > INT64_MAX)
		return kiln_fail(err, EOVERFLOW, "sandbox %s: usage to add is over INT64_MAX", id);
	if ((ret = reg_begin(r, true, what, err)))
		return ret;
	if ((ret = exists(r, id, err)))
		return reg_abort(r, ret);
	if ((ret = reg_prep(r, SQL_USAGE_ADD, &s, what, err)))
		return reg_abort(r, ret);
	if ((rc = reg_bind_text(s, 1, id)) || (rc = reg_bind_int(s, 2, (int64_t)cpu_ns)) ||
	    (rc = reg_bind_int(s, 3, (int64_t)mem_mb_ms)) ||
	    (rc = reg_run(s)))
		return reg_abort(r, reg_sqlfail(r, rc, what, err));
	if (sqlite3_changes64(r->db) != 1)
		return reg_abort(r, kiln_fail(err, EOVERFLOW, "sandbox %s: its usage would pass INT64_MAX", id));
	return reg_commit(r, what, err);
}

/* ---- VMM identity ------------------------------------------------------------------------------------- */

int reg_parse_stat_field(const char *stat, size_t len, unsigned want, uint64_t *out)
{
	const char *p = memrchr(stat, ')', len), *end = stat + len;
	uint64_t v = 0;
	unsigned field = 2;	/* the ')' ends field 2, comm, which may hold spaces and ')' */

	if (!p || want < 3)
		return -EINVAL;
	for (p++; p < end && field < want; p++)
		if (*p == ' ')
			field++;
	if (field != want || p >= end || *p < '0' || *p > '9')
		return -EINVAL;
	for (; p < end && *p >= '0' && *p <= '9'; p++) {
		if (v > (UINT64_MAX - 9) / 10)
			return -EINVAL;
		v = v * 10 + (uint64_t)(*p - '0');
	}
	if (p < end && *p != ' ' && *p != '\n')
		return -EINVAL;
	*out = v;
	return 0;
}

int reg_parse_start_time(const char *stat, size_t len, uint64_t *out)
{
	return reg_parse_stat_field(stat, len, 22, out);
}

/* Read /proc/PID/stat into buf (NUL-terminated); its length, or -errno with err. */
static ssize_t read_proc_stat(pid_t pid, char *buf, size_t size, struct kiln_err *err)
{
	char path[64];
	ssize_t n;
	int fd, e;

	if (pid <= 0)
		return kiln_fail(err, EINVAL, "pid %d is not a process", (int)pid);
	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0) {
		e = errno;
		return kiln_fail(err, e == ENOENT ? ESRCH : e, "process %d: %s", (int)pid,
				 e == ENOENT ? "gone" : strerror(e));
	}
	do
		n = read(fd, buf, size - 1);
	while (n < 0 && errno == EINTR);
	e = errno;
	close(fd);
	if (n < 0)
		return kiln_fail(err, e == ESRCH ? ESRCH : e, "process %d: reading %s: %s", (int)pid, path, strerror(e));
	if (n == 0)
		return kiln_fail(err, ESRCH, "process %d: gone", (int)pid);
	buf[n] = '\0';
	return n;
}

int reg_proc_start_time(pid_t pid, uint64_t *out, struct kiln_err *err)
{
	char buf[4096];
	ssize_t n = read_proc_stat(pid, buf, sizeof(buf), err);

	if (n < 0)
		return (int)n;
	if (reg_parse_start_time(buf, (size_t)n, out))
		return kiln_fail(err, EINVAL, "process %d: /proc/%d/stat has no start time in field 22", (int)pid,
				 (int)pid);
	return 0;
}

int reg_proc_cpu_ticks(pid_t pid, uint64_t *out, struct kiln_err *err)
{
	char buf[4096];
	ssize_t n = read_proc_stat(pid, buf, sizeof(buf), err);
	uint64_t ut, st;

	if (n < 0)
		return (int)n;
	if (reg_parse_stat_field(buf, (size_t)n, 14, &ut) || reg_parse_stat_field(buf, (size_t)n, 15, &st))
		return kiln_fail(err, EINVAL, "process %d: /proc/%d/stat has no utime and stime", (int)pid, (int)pid);
	*out = ut + st;
	return 0;
}
