//! Coroutine-local data for C (`evco_key_create` and friends), pthread-style.
//!
//! Keys are process-wide (like `pthread_key_t`): a slot in a table of [`MAX_KEYS`], each with
//! a generation so that a key deleted and made again never sees the values of the old one.
//! Values are per coroutine (per thread outside coroutines), in a thread-local map by
//! coroutine id (0: the thread itself). When a C coroutine's function returns, the
//! destructors of its non-NULL values run, up to `PTHREAD_DESTRUCTOR_ITERATIONS` rounds as
//! pthread does (a destructor may set values again).

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::{c_int, c_uint, c_void};
use std::sync::Mutex;

/// Most keys at once.
pub(super) const MAX_KEYS: usize = 1024;

/// Rounds of destructors at a coroutine's end (pthread's `PTHREAD_DESTRUCTOR_ITERATIONS`).
const ROUNDS: usize = 4;

#[derive(Clone, Copy)]
struct Slot {
    used: bool,
    generation: u32,
    dtor: Option<extern "C" fn(*mut c_void)>,
}

static KEYS: Mutex<Vec<Slot>> = Mutex::new(Vec::new());

/// One owner's values: by key index, the key's generation and the value.
type Values = HashMap<u32, (u32, usize)>;

thread_local! {
    /// Values by owner: coroutine id, or 0 for the thread itself.
    static VALUES: RefCell<HashMap<u64, Values>> = RefCell::new(HashMap::new());
}

/// A key names its slot (low 16 bits) and the slot's generation (high 16 bits), so that a
/// deleted key is told from the slot's next one.
fn split(k: c_uint) -> (u32, u32) {
    (k & 0xffff, k >> 16)
}

fn slot_of(k: c_uint) -> Result<(u32, Slot), c_int> {
    let (index, generation) = split(k);
    let keys = KEYS.lock().unwrap_or_else(|e| e.into_inner());
    match keys.get(index as usize) {
        Some(s) if s.used && s.generation & 0xffff == generation => Ok((index, *s)),
        _ => Err(libc::EINVAL),
    }
}

pub(super) fn create(dtor: Option<extern "C" fn(*mut c_void)>) -> Result<c_uint, c_int> {
    let mut keys = KEYS.lock().unwrap_or_else(|e| e.into_inner());
    let index = match keys.iter().position(|s| !s.used) {
        Some(i) => i,
        None if keys.len() < MAX_KEYS => {
            keys.push(Slot {
                used: false,
                generation: 0,
                dtor: None,
            });
            keys.len() - 1
        }
        None => return Err(libc::EAGAIN),
    };
    let s = &mut keys[index];
    s.used = true;
    s.generation = s.generation.wrapping_add(1);
    s.dtor = dtor;
    Ok(index as c_uint | ((s.generation & 0xffff) << 16))
}

pub(super) fn delete(k: c_uint) -> Result<(), c_int> {
    let (index, _) = slot_of(k)?;
    let mut keys = KEYS.lock().unwrap_or_else(|e| e.into_inner());
    keys[index as usize].used = false;
    Ok(())
}

/// Whose values the caller sees: the running coroutine's, or the thread's (0).
fn owner() -> u64 {
    crate::coroutine::current().map_or(0, |c| c.id().as_u64())
}

pub(super) fn get(k: c_uint) -> *mut c_void {
    let Ok((index, slot)) = slot_of(k) else {
        return std::ptr::null_mut();
    };
    VALUES.with(|v| {
        v.borrow()
            .get(&owner())
            .and_then(|m| m.get(&index))
            .filter(|(g, _)| *g == slot.generation)
            .map_or(std::ptr::null_mut(), |&(_, p)| p as *mut c_void)
    })
}

pub(super) fn set(k: c_uint, value: *mut c_void) -> Result<(), c_int> {
    let (index, slot) = slot_of(k)?;
    VALUES.with(|v| {
        let mut v = v.borrow_mut();
        let mine = v.entry(owner()).or_default();
        if value.is_null() {
            mine.remove(&index);
        } else {
            mine.insert(index, (slot.generation, value as usize));
        }
    });
    Ok(())
}

/// Runs the destructors of coroutine `id`'s values and forgets them (see the module docs).
pub(super) fn run_destructors(id: u64) {
    for _ in 0..ROUNDS {
        let Some(values) = VALUES.with(|v| v.borrow_mut().remove(&id)) else {
            return;
        };
        let keys: Vec<Slot> = KEYS.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for (index, (generation, value)) in values {
            let dtor = keys
                .get(index as usize)
                .filter(|s| s.used && s.generation == generation)
                .and_then(|s| s.dtor);
            if let Some(d) = dtor {
                d(value as *mut c_void);
            }
        }
    }
    VALUES.with(|v| v.borrow_mut().remove(&id));
}
