/*
 * dlist: the intrusive doubly linked list the agent keeps its requests,
 * calls and routes in: any struct with `prev` and `next` pointers to its own
 * type, and a head pointer (NULL when empty). Unlinking is O(1), which is why
 * a request being freed from inside its own callback need not be searched for.
 *
 * Macros rather than functions: the lists hold different types. Each
 * argument is evaluated more than once: pass plain lvalues. Nothing here
 * allocates, frees or blocks.
 */
#ifndef SLIPWAY_AGENT_DLIST_H
#define SLIPWAY_AGENT_DLIST_H

#include <stddef.h>

/* Puts item at the front of the list at head. */
#define DLIST_PUSH(head, item)                   \
	do {                                     \
		(item)->prev = NULL;             \
		(item)->next = (head);           \
		if (head)                        \
			(head)->prev = (item);   \
		(head) = (item);                 \
	} while (0)

/* Takes item out of the list at head (it must be in it); its links are cleared. */
#define DLIST_UNLINK(head, item)                             \
	do {                                                 \
		if ((item)->prev)                            \
			(item)->prev->next = (item)->next;   \
		else                                         \
			(head) = (item)->next;               \
		if ((item)->next)                            \
			(item)->next->prev = (item)->prev;   \
		(item)->prev = (item)->next = NULL;          \
	} while (0)

#endif
