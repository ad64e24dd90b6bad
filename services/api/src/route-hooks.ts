/**
 * A route's hooks of one kind (as `onRoute` sees them: none, one, or a list) with `hook` added last. Plugins that
 * bind a hook to each route when it is added (authentication, metrics) use it, so a request runs only its route's
 * hooks and none looks its route's options up.
 */
export function withRouteHook<H>(hooks: H | readonly H[] | undefined, hook: H): H[] {
  if (hooks === undefined) return [hook];
  return Array.isArray(hooks) ? [...(hooks as readonly H[]), hook] : [hooks as H, hook];
}
