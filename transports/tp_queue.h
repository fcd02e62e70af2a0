/*
 * The FIFO of requests a transport keeps per connection: an intrusive singly linked list
 * through the request's `next`. Include it after the transport's own struct fx_tp_req (with a
 * `struct fx_tp_req *next` member) and struct req_queue { head, tail } are complete.
 */
#ifndef FX_TP_QUEUE_H
#define FX_TP_QUEUE_H

#include <stddef.h>

/* Appends r at the tail. */
static inline void queue_push(struct req_queue *q, struct fx_tp_req *r)
{
    r->next = NULL;
    if (q->tail != NULL) {
        q->tail->next = r;
    } else {
        q->head = r;
    }
    q->tail = r;
}

/* Removes the head (the queue must not be empty). */
static inline void queue_pop(struct req_queue *q)
{
    q->head = q->head->next;
    if (q->head == NULL) {
        q->tail = NULL;
    }
}

#endif /* FX_TP_QUEUE_H */
