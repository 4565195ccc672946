//! A fixed-size byte queue between the main loop and a UART interrupt.
//!
//! The board's UART sends and receives from its interrupt handler, so the main loop never waits
//! on the link: it queues whole frames for sending and drains what arrived. A frame goes in
//! whole or not at all ([`ByteQueue::push_all`]): half a frame on the wire would cost the frame
//! after it too, while a frame left out is one sequence gap the gateway can see.

/// A ring of `N` bytes.
pub struct ByteQueue<const N: usize> {
    buf: [u8; N],
    head: usize,
    len: usize,
}

impl<const N: usize> Default for ByteQueue<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> ByteQueue<N> {
    pub const fn new() -> Self {
        Self { buf: [0; N], head: 0, len: 0 }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Room left, in bytes.
    pub fn free(&self) -> usize {
        N - self.len
    }

    /// Appends one byte; `false` (and nothing stored) when full.
    pub fn push(&mut self, byte: u8) -> bool {
        if self.len == N {
            return false;
        }
        let tail = (self.head + self.len) % N;
        if let Some(slot) = self.buf.get_mut(tail) {
            *slot = byte;
            self.len += 1;
            true
        } else {
            false
        }
    }

    /// Appends all of `bytes`, or nothing when they do not all fit; returns whether they went in.
    pub fn push_all(&mut self, bytes: &[u8]) -> bool {
        if bytes.len() > self.free() {
            return false;
        }
        for &b in bytes {
            self.push(b);
        }
        true
    }

    /// The oldest byte, left in place.
    pub fn peek(&self) -> Option<u8> {
        if self.len == 0 { None } else { self.buf.get(self.head).copied() }
    }

    /// Takes the oldest byte.
    pub fn pop(&mut self) -> Option<u8> {
        if self.len == 0 {
            return None;
        }
        let byte = self.buf.get(self.head).copied();
        self.head = (self.head + 1) % N;
        self.len -= 1;
        byte
    }

    /// Moves the oldest bytes into `out`, as many as fit; returns how many.
    pub fn pop_into(&mut self, out: &mut [u8]) -> usize {
        let mut n = 0;
        for slot in out.iter_mut() {
            match self.pop() {
                Some(b) => *slot = b,
                None => break,
            }
            n += 1;
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_come_out_in_order_across_the_wrap() {
        let mut q = ByteQueue::<4>::new();
        assert_eq!(q.peek(), None);
        assert!(q.push_all(&[1, 2, 3]));
        assert_eq!(q.peek(), Some(1));
        assert_eq!((q.pop(), q.pop()), (Some(1), Some(2)));
        assert!(q.push_all(&[4, 5, 6]), "wraps round the end of the buffer");
        assert_eq!((q.len(), q.free()), (4, 0));
        let mut out = [0u8; 8];
        assert_eq!(q.pop_into(&mut out), 4);
        assert_eq!(out[..4], [3, 4, 5, 6]);
        assert!(q.is_empty());
        assert_eq!(q.pop(), None);
    }

    #[test]
    fn a_frame_that_does_not_fit_is_left_out_whole() {
        let mut q = ByteQueue::<5>::new();
        assert!(q.push_all(&[1, 2, 3]));
        assert!(!q.push_all(&[7, 8, 9]), "three bytes do not fit in two");
        assert_eq!(q.len(), 3, "nothing of the refused frame went in");
        assert!(q.push_all(&[4, 5]));
        assert!(!q.push(6));
        let mut out = [0u8; 2];
        assert_eq!(q.pop_into(&mut out), 2);
        assert_eq!(out, [1, 2]);
    }
}
