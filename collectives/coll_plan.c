/* Plan storage: a grow-only array of ops, reused between operations. */
#include "coll_plan.h"

#include <stdlib.h>
#include <string.h>

void fx_plan_init(struct fx_plan *plan)
{
    memset(plan, 0, sizeof(*plan));
}

void fx_plan_fini(struct fx_plan *plan)
{
    free(plan->ops);
    memset(plan, 0, sizeof(*plan));
}

void fx_plan_reset(struct fx_plan *plan)
{
    plan->nops       = 0;
    plan->nslots     = 0;
    plan->slot_count = 0;
}

int fx_plan_push(struct fx_plan *plan, const struct fx_plan_op *op)
{
    if (plan->nops == plan->cap) {
        size_t cap = plan->cap ? plan->cap * 2 : 64;
        void *p    = realloc(plan->ops, cap * sizeof(*plan->ops));

        if (p == NULL) {
            return -1;
        }
        plan->ops = p;
        plan->cap = cap;
    }
    plan->ops[plan->nops] = *op;
    return (int)plan->nops++;
}
