/*
 * c-mask: a Sluice plugin written in C against include/sluice_plugin.h.
 *
 * Masks card-number-like digit runs in every payload: any run of at least `min_digits`
 * (default 12) ASCII digits, which may be grouped by single spaces or dashes, keeps its last
 * four digits and has the others replaced by '*'.
 * Key and headers pass through; records go to the `masked` output. Config: {"min_digits": N}
 * with 4 < N <= 64, or {}.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sluice_plugin.h"

typedef struct {
    size_t min_digits;
    uint8_t *buf;
    size_t cap;
} mask_instance;

static void fail(const sluice_host *host, const char *message) {
    sluice_str s = {message, strlen(message)};
    host->fail(host->ctx, s);
}

/* A tiny reader for {"min_digits": N}: anything else but {} is refused. */
static int parse_config(sluice_str config, size_t *min_digits, char *err, size_t err_len) {
    char text[256];
    if (config.len >= sizeof text) {
        snprintf(err, err_len, "config too long: expected {} or {\"min_digits\": N}");
        return -1;
    }
    memcpy(text, config.ptr ? config.ptr : "", config.len);
    text[config.len] = '\0';
    const char *key = strstr(text, "\"min_digits\"");
    if (key == NULL) {
        for (const char *p = text; *p; p++) {
            if (*p != '{' && *p != '}' && *p != ' ' && *p != '\n' && *p != '\t') {
                snprintf(err, err_len, "unknown config %.60s: expected {} or {\"min_digits\": N}", text);
                return -1;
            }
        }
        return 0;
    }
    long n = 0;
    if (sscanf(key + strlen("\"min_digits\""), " : %ld", &n) != 1 || n <= 4 || n > 64) {
        snprintf(err, err_len, "min_digits must be a number above 4 and at most 64");
        return -1;
    }
    *min_digits = (size_t)n;
    return 0;
}

static sluice_status mask_open(sluice_str config, const sluice_open_context *context,
                               const sluice_host *host, void **instance) {
    (void)context;
    size_t min_digits = 12;
    char err[160];
    if (parse_config(config, &min_digits, err, sizeof err) != 0) {
        fail(host, err);
        return SLUICE_STATUS_ERROR;
    }
    mask_instance *self = calloc(1, sizeof *self);
    if (self == NULL) {
        fail(host, "out of memory");
        return SLUICE_STATUS_ERROR;
    }
    self->min_digits = min_digits;
    *instance = self;
    return SLUICE_STATUS_OK;
}

static int is_digit(uint8_t c) { return c >= '0' && c <= '9'; }

/* A run is digits joined by single spaces or dashes ("4111 1111-1111 1111"). Runs with at least
 * min_digits digits keep their last four digits; the other digits become '*'. */
static void mask_digits(uint8_t *p, size_t len, size_t min_digits) {
    size_t i = 0;
    while (i < len) {
        if (!is_digit(p[i])) {
            i++;
            continue;
        }
        size_t start = i, digits = 0, end = i;
        while (i < len) {
            if (is_digit(p[i])) {
                digits++;
                end = ++i;
            } else if ((p[i] == ' ' || p[i] == '-') && i + 1 < len && is_digit(p[i + 1])) {
                i++;
            } else {
                break;
            }
        }
        if (digits >= min_digits) {
            size_t keep = 4;
            for (size_t j = end; j-- > start;) {
                if (!is_digit(p[j])) continue;
                if (keep > 0) {
                    keep--;
                } else {
                    p[j] = '*';
                }
            }
        }
    }
}

static sluice_status mask_process(void *instance, sluice_events events, const sluice_host *host) {
    mask_instance *self = instance;
    size_t n = events.ptr ? events.len : 0;
    for (size_t e = 0; e < n; e++) {
        const sluice_event *ev = &events.ptr[e];
        size_t len = ev->payload.ptr ? ev->payload.len : 0;
        if (len > self->cap) {
            uint8_t *grown = realloc(self->buf, len);
            if (grown == NULL) {
                fail(host, "out of memory");
                return SLUICE_STATUS_ERROR;
            }
            self->buf = grown;
            self->cap = len;
        }
        if (len > 0) memcpy(self->buf, ev->payload.ptr, len);
        mask_digits(self->buf, len, self->min_digits);

        sluice_record rec;
        memset(&rec, 0, sizeof rec);
        rec.output = SLUICE_STR("masked");
        rec.key = ev->key;
        rec.value.ptr = self->buf;
        rec.value.len = len;
        rec.headers = ev->headers;
        rec.partition = SLUICE_PARTITION_ANY;
        rec.flags = ev->flags & (SLUICE_FLAG_KEY_NULL | SLUICE_FLAG_VALUE_NULL);
        sluice_status st = host->emit(host->ctx, &rec);
        if (st != SLUICE_STATUS_OK) {
            fail(host, "the host refused a record for output `masked`");
            return SLUICE_STATUS_ERROR;
        }
    }
    return SLUICE_STATUS_OK;
}

static sluice_status mask_partitions(void *instance, sluice_partitions partitions, const sluice_host *host) {
    (void)instance;
    char line[160];
    size_t n = partitions.ptr ? partitions.len : 0;
    for (size_t i = 0; i < n; i++) {
        const sluice_partition *p = &partitions.ptr[i];
        int len = snprintf(line, sizeof line, "c-mask: partition %.*s/%d changed hands",
                           (int)p->topic.len, p->topic.ptr ? p->topic.ptr : "", p->partition);
        sluice_str msg = {line, (size_t)len < sizeof line ? (size_t)len : sizeof line - 1};
        host->log(host->ctx, SLUICE_LOG_DEBUG, msg);
    }
    return SLUICE_STATUS_OK;
}

/* The one output this plugin emits to (`sluice validate` checks the spec has it). */
static sluice_str mask_output_name(size_t index) {
    return index == 0 ? SLUICE_STR("masked") : (sluice_str){NULL, 0};
}

static sluice_status mask_close(void *instance, const sluice_host *host) {
    (void)host;
    mask_instance *self = instance;
    if (self != NULL) {
        free(self->buf);
        free(self);
    }
    return SLUICE_STATUS_OK;
}

static const sluice_plugin_vtable VTABLE = {
    sizeof(sluice_plugin_vtable), mask_open, mask_process, mask_partitions, mask_partitions,
    NULL /* flush: nothing is buffered */, mask_close, mask_output_name,
    NULL /* committed (1.3): nothing is kept for a replay */, NULL /* store_name: no state */,
};

static const sluice_plugin_descriptor DESCRIPTOR = {
    SLUICE_ABI_MAJOR,
    SLUICE_ABI_MINOR,
    SLUICE_STR("c-mask"),
    SLUICE_STR("0.1.0"),
    SLUICE_STR("Masks card-number-like digit runs, keeping the last four digits (written in C)"),
    SLUICE_STR("{\"type\":\"object\",\"additionalProperties\":false,"
               "\"properties\":{\"min_digits\":{\"type\":\"integer\",\"minimum\":5,\"maximum\":64}}}"),
    &VTABLE,
    NULL,
};

const sluice_plugin_descriptor *sluice_plugin_entry(void) { return &DESCRIPTOR; }
