/*
 * sluice_plugin.h: the Sluice pipeline plugin ABI, version 1.2.
 *
 * A plugin is a shared library exporting
 *
 *     const sluice_plugin_descriptor *sluice_plugin_entry(void);
 *
 * which returns a pointer to static data that lives as long as the library. The host never
 * unloads a plugin library. The Rust definitions are in src/abi.rs; both must match field for
 * field (the test suite compiles this header and compares every size and offset).
 *
 * Rules of the road:
 *  - Every pointer+length pair may be {NULL, 0}: treat it as empty.
 *  - Strings are UTF-8 and NOT NUL-terminated.
 *  - Everything the host passes in is borrowed for the duration of the call only.
 *  - Records passed to host->emit are copied before emit returns: build them on your stack.
 *  - Nothing allocated by one side is freed by the other.
 *  - Never let a C++ exception, a longjmp or a Go panic escape an entry point.
 *  - An instance is called from one thread at a time, but may move between threads.
 *  - To fail a call, call host->fail(host->ctx, message) and return SLUICE_STATUS_ERROR.
 *
 * Compatibility: within major version 1 the data structs below are frozen; the two tables
 * (sluice_host, sluice_plugin_vtable) only grow at the end and start with their size. A host
 * accepts plugins of any 1.x minor version; check host->size before using a callback added
 * after 1.0 (the state calls of 1.2). Set the descriptor's abi_major and abi_minor to the
 * SLUICE_ABI_MAJOR and SLUICE_ABI_MINOR of the header you compile against, and the vtable's
 * size to sizeof(sluice_plugin_vtable): a host of another major version refuses the plugin by
 * name, and a host of an older minor version calls only the entries it knows.
 *
 * 1.1 added sluice_plugin_vtable.output_name; a 1.0 table (without it) still loads.
 * 1.2 added the state calls at the end of sluice_host (state_get, state_put, state_delete,
 * state_scan): use them only when host->size >= SLUICE_HOST_SIZE_1_2.
 * 1.3 added sluice_plugin_vtable.committed and store_name; a 1.2 host never calls them. Fill the vtable with
 * designated initializers (.open = my_open, ...): entries a newer header adds are then NULL
 * (positional initializers miss them, an error under -Wextra -Werror).
 */
#ifndef SLUICE_PLUGIN_H
#define SLUICE_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SLUICE_ABI_MAJOR 1
#define SLUICE_ABI_MINOR 3

typedef int32_t sluice_status;
#define SLUICE_STATUS_OK 0
#define SLUICE_STATUS_ERROR 1
#define SLUICE_STATUS_PANIC 2
#define SLUICE_STATUS_UNKNOWN_OUTPUT 3 /* emit: the spec defines no output of that name */
#define SLUICE_STATUS_INVALID_RECORD 4 /* emit: malformed record */
#define SLUICE_STATUS_NOT_FOUND 5      /* state_get: the store has no value for the key */
#define SLUICE_STATUS_STATE_REFUSED 6  /* a state call the host refused (undeclared store, a
                                          partition not assigned, a storage error): the call
                                          fails whatever the plugin returns */

#define SLUICE_FLAG_KEY_NULL 1u   /* the key is absent (null), not merely empty */
#define SLUICE_FLAG_VALUE_NULL 2u /* the value is absent: a tombstone */

#define SLUICE_PARTITION_ANY (-1)

#define SLUICE_EVENT_ERROR_INVALID_INPUT 1u /* undecodable input: retrying cannot help */
#define SLUICE_EVENT_ERROR_FAILED 2u        /* processing failed: a retry may succeed */

#define SLUICE_LOG_ERROR 1u
#define SLUICE_LOG_WARN 2u
#define SLUICE_LOG_INFO 3u
#define SLUICE_LOG_DEBUG 4u

typedef struct sluice_bytes {
    const uint8_t *ptr;
    size_t len;
} sluice_bytes;

typedef struct sluice_str {
    const char *ptr;
    size_t len;
} sluice_str;

typedef struct sluice_header {
    sluice_str key;
    sluice_bytes value;
} sluice_header;

typedef struct sluice_headers {
    const sluice_header *ptr;
    size_t len;
} sluice_headers;

/* One input event, borrowed for the duration of the call. */
typedef struct sluice_event {
    sluice_str topic;
    int32_t partition;
    uint32_t flags;       /* SLUICE_FLAG_* */
    int64_t offset;
    int64_t timestamp_ms; /* ms since the Unix epoch, -1 when unknown */
    sluice_bytes key;
    sluice_bytes payload;
    sluice_headers headers;
} sluice_event;

typedef struct sluice_events {
    const sluice_event *ptr;
    size_t len;
} sluice_events;

/* One output record, passed to host->emit. */
typedef struct sluice_record {
    sluice_str output;    /* a name from the spec's `outputs:` */
    sluice_bytes key;
    sluice_bytes value;
    sluice_headers headers;
    int32_t partition;    /* SLUICE_PARTITION_ANY lets the sink choose */
    uint32_t flags;       /* SLUICE_FLAG_*: set SLUICE_FLAG_KEY_NULL for "no key" */
} sluice_record;

typedef struct sluice_partition {
    sluice_str topic;
    int32_t partition;
} sluice_partition;

typedef struct sluice_partitions {
    const sluice_partition *ptr;
    size_t len;
} sluice_partitions;

typedef struct sluice_open_context {
    sluice_str pipeline;
    uint32_t worker_id;    /* 0 .. worker_count-1 */
    uint32_t worker_count;
} sluice_open_context;

/* The host's callbacks, passed to every call. Always pass `ctx` back. */
typedef struct sluice_host {
    size_t size; /* sizeof(sluice_host) as the host was built */
    void *ctx;
    sluice_status (*emit)(void *ctx, const sluice_record *record);
    void (*event_error)(void *ctx, size_t index, uint32_t kind, sluice_str message);
    void (*fail)(void *ctx, sluice_str message);
    void (*log)(void *ctx, uint32_t level, sluice_str message);
    /* ABI 1.2: keyed state, one set of named stores (the spec's `state.stores`) per input
     * partition, restored from its changelog topic before the partition's first event. Callable
     * from process, flush, assigned and revoked, for a partition assigned to the pipeline.
     * state_get: on SLUICE_STATUS_OK, *value borrows the host's copy until the next host call
     * or the end of this call; SLUICE_STATUS_NOT_FOUND when there is none. A write is in the
     * changelog before the offsets of the call's events are committed. */
    sluice_status (*state_get)(void *ctx, const sluice_partition *partition, sluice_str store,
                               sluice_bytes key, sluice_bytes *value);
    sluice_status (*state_put)(void *ctx, const sluice_partition *partition, sluice_str store,
                               sluice_bytes key, sluice_bytes value);
    sluice_status (*state_delete)(void *ctx, const sluice_partition *partition, sluice_str store,
                                  sluice_bytes key);
    /* Calls visit for every entry whose key starts with prefix, in key order, until visit
     * returns non-zero. visit must not call the host. */
    sluice_status (*state_scan)(void *ctx, const sluice_partition *partition, sluice_str store,
                                sluice_bytes prefix,
                                int32_t (*visit)(void *visit_ctx, sluice_bytes key,
                                                 sluice_bytes value),
                                void *visit_ctx);
} sluice_host;

/* sizeof(sluice_host) of a 1.2 host: the state calls are there when host->size is at least this. */
#define SLUICE_HOST_SIZE_1_2 (offsetof(sluice_host, state_scan) + sizeof(void *))

/* The plugin's entry points. open, process and close are REQUIRED: a library with NULL in one
 * of them is refused at load, naming the entry. assigned, revoked, flush and output_name are
 * OPTIONAL: NULL means there is nothing to do then (the host counts the call as done). */
typedef struct sluice_plugin_vtable {
    size_t size; /* sizeof(sluice_plugin_vtable) as the plugin was built */
    /* Required. config_json is always a JSON object ("{}" when the spec has none). */
    sluice_status (*open)(sluice_str config_json, const sluice_open_context *context,
                          const sluice_host *host, void **instance);
    /* Required. */
    sluice_status (*process)(void *instance, sluice_events events, const sluice_host *host);
    /* Optional (NULL: no-op). */
    sluice_status (*assigned)(void *instance, sluice_partitions partitions, const sluice_host *host);
    /* Optional (NULL: no-op). */
    sluice_status (*revoked)(void *instance, sluice_partitions partitions, const sluice_host *host);
    /* Optional (NULL: nothing buffered). Called before the host commits offsets: emit everything
     * you buffer. */
    sluice_status (*flush)(void *instance, const sluice_host *host);
    /* Required. Frees the instance; called exactly once. */
    sluice_status (*close)(void *instance, const sluice_host *host);
    /* Optional, ABI 1.1. The name of the index-th output this plugin emits to, and an empty
     * string ({NULL, 0}) past the last one. `sluice validate` refuses a spec that lacks one of
     * them. NULL: the plugin does not say. */
    sluice_str (*output_name)(size_t index);
    /* Optional, ABI 1.3. What the host committed: for each of partitions, offsets[i] (as many
     * as partitions) is the next offset to read of partitions.ptr[i]; every event before it was
     * fully handled, its records delivered and its offset committed, so none of them is replayed
     * after a crash. Called at the instance's flush after the commit is confirmed, for the
     * partitions the instance processed. Delete state kept only for a replay (a closed window,
     * a join) here. NULL: no-op. */
    sluice_status (*committed)(void *instance, sluice_partitions partitions,
                               const int64_t *offsets, const sluice_host *host);
    /* Optional, ABI 1.3. The name of the index-th state store this plugin keeps state in (by
     * default), and an empty string past the last one. `sluice validate` refuses a spec without
     * `state:` for a plugin that names any. NULL: the plugin does not say. */
    sluice_str (*store_name)(size_t index);
} sluice_plugin_vtable;

typedef struct sluice_plugin_descriptor {
    uint32_t abi_major; /* these two fields never move, in any version */
    uint32_t abi_minor;
    sluice_str name;
    sluice_str version;
    sluice_str description;
    sluice_str config_schema; /* JSON schema of the config, or {NULL, 0} */
    const sluice_plugin_vtable *vtable;
    const void *layout; /* Rust plugins only (abi_stable layout); NULL from C */
} sluice_plugin_descriptor;

#define SLUICE_STR(literal) ((sluice_str){(literal), sizeof(literal) - 1})

#if defined(_WIN32)
#define SLUICE_EXPORT __declspec(dllexport)
#else
#define SLUICE_EXPORT __attribute__((visibility("default")))
#endif

/* The one symbol a plugin exports (visible even under -fvisibility=hidden). */
SLUICE_EXPORT const sluice_plugin_descriptor *sluice_plugin_entry(void);

#ifdef __cplusplus
}
#endif

#endif /* SLUICE_PLUGIN_H */
