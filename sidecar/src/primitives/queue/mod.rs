//! Work queues: at-least-once jobs handed to one worker at a time (issue
//! 21, in progress: the storage seam and the memory store so far; the
//! Redis store, the primitive, its APIs and schedules follow).

pub mod memory;
pub mod store;
