//! Content-addressed voice ids, identical to the suite's: "v-" + the first 16 hex digits of
//! SHA-256(f32 little-endian samples ‖ UTF-8 transcript). A small SHA-256 (FIPS 180-4) keeps the kit free of a
//! hashing dependency; the tests pin it to the standard's test vectors and to ids the Python server gave.

/// The id a server gives a voice: a client can predict it and reuse it in later `start`s.
pub fn voice_id(audio: &[f32], text: &str) -> String {
    let mut bytes = Vec::with_capacity(audio.len() * 4 + text.len());
    for sample in audio {
        bytes.extend_from_slice(&sample.to_le_bytes());
    }
    bytes.extend_from_slice(text.as_bytes());
    let digest = sha256(&bytes);
    let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("v-{hex}")
}

const ROUND: [u32; 64] = [
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
];

const INITIAL: [u32; 8] = [
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
];

/// SHA-256 of a message held in memory.
pub fn sha256(message: &[u8]) -> [u8; 32] {
    let mut hasher = Sha256::default();
    hasher.update(message);
    hasher.finish()
}

/// Streaming SHA-256: `update` with any number of pieces, then `finish`.
#[derive(Clone)]
pub struct Sha256 {
    state: [u32; 8],
    pending: Vec<u8>,
    length: u64,
}

impl Default for Sha256 {
    fn default() -> Self {
        Sha256 {
            state: INITIAL,
            pending: Vec::with_capacity(64),
            length: 0,
        }
    }
}

impl Sha256 {
    pub fn update(&mut self, mut data: &[u8]) {
        self.length += data.len() as u64;
        if !self.pending.is_empty() {
            let take = (64 - self.pending.len()).min(data.len());
            self.pending.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.pending.len() == 64 {
                let block: [u8; 64] = self.pending[..].try_into().unwrap_or([0; 64]);
                compress(&mut self.state, &block);
                self.pending.clear();
            }
        }
        let mut blocks = data.chunks_exact(64);
        for block in &mut blocks {
            compress(&mut self.state, block.try_into().unwrap_or(&[0; 64]));
        }
        self.pending.extend_from_slice(blocks.remainder());
    }

    pub fn finish(mut self) -> [u8; 32] {
        let bits = self.length.wrapping_mul(8);
        let mut tail = std::mem::take(&mut self.pending);
        tail.push(0x80);
        while tail.len() % 64 != 56 {
            tail.push(0);
        }
        tail.extend_from_slice(&bits.to_be_bytes());
        for block in tail.chunks_exact(64) {
            compress(&mut self.state, block.try_into().unwrap_or(&[0; 64]));
        }
        let mut digest = [0u8; 32];
        for (out, word) in digest.chunks_exact_mut(4).zip(self.state) {
            out.copy_from_slice(&word.to_be_bytes());
        }
        digest
    }
}

fn compress(state: &mut [u32; 8], block: &[u8; 64]) {
    let mut w = [0u32; 64];
    for (i, word) in block.chunks_exact(4).enumerate() {
        w[i] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
    }
    for i in 16..64 {
        let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
        let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16].wrapping_add(s0).wrapping_add(w[i - 7]).wrapping_add(s1);
    }
    let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut h] = *state;
    for i in 0..64 {
        let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
        let choose = (e & f) ^ (!e & g);
        let t1 = h
            .wrapping_add(s1)
            .wrapping_add(choose)
            .wrapping_add(ROUND[i])
            .wrapping_add(w[i]);
        let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
        let majority = (a & b) ^ (a & c) ^ (b & c);
        let t2 = s0.wrapping_add(majority);
        h = g;
        g = f;
        f = e;
        e = d.wrapping_add(t1);
        d = c;
        c = b;
        b = a;
        a = t1.wrapping_add(t2);
    }
    for (slot, value) in state.iter_mut().zip([a, b, c, d, e, f, g, h]) {
        *slot = slot.wrapping_add(value);
    }
}

/// Files of a checkpoint the suite's weights hash covers, in its order (qtts_eval.checkpoints.weights_hash).
pub const WEIGHTS_FILES: [&str; 2] = ["model.safetensors", "speech_tokenizer/model.safetensors"];

/// `hello.implementation.weights_hash` of a checkpoint directory, as the suite computes it: SHA-256 over, for
/// each of `WEIGHTS_FILES` in order, its relative path (UTF-8) then its bytes; lowercase hex.
pub fn weights_hash(directory: &std::path::Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut hasher = Sha256::default();
    let mut buffer = vec![0u8; 1 << 20];
    for relative in WEIGHTS_FILES {
        hasher.update(relative.as_bytes());
        let mut file = std::fs::File::open(directory.join(relative))?;
        loop {
            let read = file.read(&mut buffer)?;
            if read == 0 {
                break;
            }
            hasher.update(&buffer[..read]);
        }
    }
    Ok(hasher.finish().iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(digest: [u8; 32]) -> String {
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn standard_vectors() {
        assert_eq!(
            hex(sha256(b"")),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            hex(sha256(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let two_blocks = b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
        assert_eq!(
            hex(sha256(two_blocks)),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
        );
        let mut pieces = Sha256::default(); // split across blocks: the streaming path
        for piece in two_blocks.chunks(7) {
            pieces.update(piece);
        }
        assert_eq!(hex(pieces.finish()), hex(sha256(two_blocks)));
    }

    /// qtts_eval.checkpoints.weights_hash of the test's two files.
    const PYTHON_HASH: &str = "1b11590c78fea4168bc3bd1161a8fdd5182e364c3308e15c44266f21ee63cc20";

    #[test]
    fn weights_hash_follows_the_suites_scheme() {
        // Value from qtts_eval.checkpoints.weights_hash on files holding b"talker" and b"codec".
        let dir = std::env::temp_dir().join(format!("qtts-port-kit-hash-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("speech_tokenizer")).unwrap();
        std::fs::write(dir.join("model.safetensors"), b"talker").unwrap();
        std::fs::write(dir.join("speech_tokenizer/model.safetensors"), b"codec").unwrap();
        let expected = hex(sha256(
            b"model.safetensorstalkerspeech_tokenizer/model.safetensorscodec",
        ));
        assert_eq!(weights_hash(&dir).unwrap(), expected);
        assert_eq!(weights_hash(&dir).unwrap(), PYTHON_HASH);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
